"""Operators rhaiflow does not have, a callback, and values known only at run time."""
from datetime import datetime

from airflow import DAG
from airflow.models import Variable
from airflow.operators.bash import BashOperator
from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor
from airflow.providers.postgres.operators.postgres import PostgresOperator


def on_fail(context):
    print("failed", context)


with DAG(
    "unknown_ops",
    start_date=datetime(2024, 1, 1),
    schedule="0 3 * * *",
    on_failure_callback=on_fail,
    render_template_as_native_obj=True,
) as dag:
    wait = S3KeySensor(task_id="wait_for_key", bucket_key="s3://bucket/{{ ds }}/data.csv", aws_conn_id="aws", poke_interval=120)
    create = PostgresOperator(task_id="create_table", postgres_conn_id="pg", sql="CREATE TABLE t (id int)", retries=3)
    run = BashOperator(
        task_id="run",
        bash_command="echo {{ var.value.env }}",
        env={"TARGET": Variable.get("target", default_var="x")},
        sla=None,
    )
    wait >> create >> run
