"""A classic DAG: a with-block, default_args, bash and empty operators, every edge form."""
from datetime import datetime, timedelta

from airflow import DAG
from airflow.operators.bash import BashOperator
from airflow.operators.dummy import DummyOperator
from airflow.operators.empty import EmptyOperator

default_args = {
    "owner": "data-eng",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "email": ["ops@example.com"],
    "email_on_failure": True,
    "depends_on_past": False,
}

with DAG(
    "classic_with",
    default_args=default_args,
    description="classic operators in a with-block",
    schedule_interval="30 6 * * 1-5",
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["example", "classic"],
    max_active_runs=1,
) as dag:
    start = EmptyOperator(task_id="start")
    old = DummyOperator(task_id="old_style")
    extract = BashOperator(
        task_id="extract",
        bash_command="echo extracting {{ ds }} for {{ execution_date }}",
        env={"REGION": "eu", "LIMIT": "10"},
        execution_timeout=timedelta(hours=1),
    )
    transform = BashOperator(
        task_id="transform",
        bash_command="echo transform {{ ti.xcom_pull(task_ids='extract') }}",
    )
    load_a = BashOperator(task_id="load_a", bash_command="echo a", retries=0)
    load_b = BashOperator(task_id="load_b", bash_command="echo b", trigger_rule="all_done")
    end = EmptyOperator(task_id="end")

    start >> old >> extract
    extract.set_downstream(transform)
    transform >> [load_a, load_b]
    end << [load_a, load_b]
    notify = BashOperator(task_id="notify", bash_command="echo done")
    notify.set_upstream(end)
