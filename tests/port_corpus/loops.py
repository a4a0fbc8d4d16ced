"""Tasks made in loops and comprehensions, ids from f-strings, % and .format, if on constants."""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator

TABLES = {"users": "daily", "orders": "hourly", "events": "daily"}
REGIONS = ["eu", "us"]
ENV = "prod"
DEBUG = False
VERSION = 3

with DAG(
    dag_id="loops_%s" % ENV,
    start_date=datetime(2024, 1, 1) + timedelta(days=1),
    schedule_interval="@hourly",
    catchup=False,
) as dag:
    start = EmptyOperator(task_id="start")
    done = EmptyOperator(task_id="done")
    for table, cadence in TABLES.items():
        if cadence != "daily":
            continue
        extract = BashOperator(task_id=f"extract_{table}", bash_command=f"echo {table} {{{{ ds }}}}")
        loads = [
            BashOperator(task_id="load_{}_{}".format(table, region), bash_command="echo %s %s" % (table, region))
            for region in REGIONS
        ]
        start >> extract >> loads
        for load in loads:
            load >> done
    if DEBUG:
        debug = EmptyOperator(task_id="debug")
    else:
        quiet = EmptyOperator(task_id="quiet_v" + str(VERSION))
        done >> quiet
    steps = []
    for i in range(3):
        steps.append(BashOperator(task_id="step_" + str(i).zfill(2), bash_command="echo " + str(i * 10)))
    for a, b in zip(steps, steps[1:]):
        a >> b
    done >> steps[0]
