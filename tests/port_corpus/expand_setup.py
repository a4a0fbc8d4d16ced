"""Dynamic task mapping (.partial/.expand) and setup/teardown tasks."""
from datetime import datetime

from airflow import DAG
from airflow.decorators import setup, task, teardown
from airflow.operators.bash import BashOperator

with DAG("expand_setup", start_date=datetime(2024, 1, 1), schedule=None) as dag:

    @task
    def make_list():
        return [1, 2, 3]

    @task
    def add_one(x, base=0):
        return x + base + 1

    @task
    def total(values):
        return sum(values)

    added = add_one.partial(base=10).expand(x=make_list())
    total(added)
    echo = BashOperator.partial(task_id="echo").expand(bash_command=["echo 1", "echo 2"])

    @setup
    @task
    def create_cluster():
        return "cluster"

    @teardown
    @task
    def delete_cluster(name):
        print("deleting", name)

    create = create_cluster()
    work = BashOperator(task_id="work", bash_command="echo work")
    delete = delete_cluster(create)
    create >> work >> delete
    plain_setup = BashOperator(task_id="plain_setup", bash_command="echo s").as_setup()
    plain_teardown = BashOperator(task_id="plain_teardown", bash_command="echo t").as_teardown(setups=plain_setup)
    plain_setup >> echo >> plain_teardown
