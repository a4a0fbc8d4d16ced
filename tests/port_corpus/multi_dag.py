"""Several DAGs from one loop: schedule presets, "@once", None; a pendulum date with a time zone."""
import pendulum

from airflow import DAG
from airflow.operators.bash import BashOperator

for name, sched in [("multi_hourly", "@hourly"), ("multi_once", "@once"), ("multi_manual", None)]:
    with DAG(name, start_date=pendulum.datetime(2024, 1, 1, tz="Asia/Shanghai"), schedule=sched, catchup=False) as dag:
        a = BashOperator(task_id="a", bash_command=f"echo {name}")
        b = BashOperator(task_id="b", bash_command="echo b")
        a >> b
    globals()[name] = dag
