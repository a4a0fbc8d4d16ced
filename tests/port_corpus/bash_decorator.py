"""@task.bash: the command the function returns, with a TaskFlow result in it."""
from datetime import datetime

from airflow.decorators import dag, task


@dag(dag_id="bash_decorator", start_date=datetime(2024, 1, 1), schedule="@daily", default_args={"retries": 1})
def bash_flow():
    @task
    def get_name():
        return "world"

    @task.bash
    def greet(name):
        return f"echo hello {name}"

    @task.bash(env={"GREETING": "hi"})
    def static():
        return "echo $GREETING"

    greet(get_name()) >> static()


bash_flow()
