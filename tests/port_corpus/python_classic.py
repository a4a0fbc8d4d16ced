"""PythonOperator with callables that use module-level imports, constants and a helper; a lambda; a
function imported from a module beside the DAG file."""
import json
import os.path
from datetime import datetime

from airflow import DAG
from airflow.operators.python import PythonOperator
from helpers import double

BASE = "/data"
LIMITS = {"users": 10}


def _path(name):
    return os.path.join(BASE, name)


def extract(table, **context):
    rows = [{"id": i} for i in range(LIMITS[table])]
    print("extract", table, context["ds"])
    return rows


def load(rows, table, target=None):
    with open(_path(table + ".json"), "w") as f:
        json.dump(rows, f)
    return len(rows)


with DAG("python_classic", start_date=datetime(2024, 1, 1), schedule="@daily") as dag:
    e = PythonOperator(task_id="extract", python_callable=extract, op_args=["users"])
    l = PythonOperator(
        task_id="load",
        python_callable=load,
        op_kwargs={"rows": e.output, "table": "users", "target": "{{ ds }}"},
        templates_dict={"day": "{{ ds }}"},
    )
    check = PythonOperator(task_id="check", python_callable=lambda: print("ok"))
    twice = PythonOperator(task_id="double_it", python_callable=double, op_args=[21])
    e >> l >> check >> twice
