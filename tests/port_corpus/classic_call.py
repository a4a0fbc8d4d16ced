"""DAG(...) as a call, operators given dag=dag, the sensors and notifiers rhaiflow has, chain and cross_downstream."""
from datetime import timedelta

from airflow import DAG
from airflow.models.baseoperator import chain, cross_downstream
from airflow.operators.bash import BashOperator
from airflow.operators.email import EmailOperator
from airflow.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.providers.dingding.operators.dingding import DingdingOperator
from airflow.providers.http.operators.http import SimpleHttpOperator
from airflow.providers.http.sensors.http import HttpSensor
from airflow.sensors.bash import BashSensor
from airflow.sensors.date_time import DateTimeSensor
from airflow.sensors.external_task import ExternalTaskSensor
from airflow.sensors.filesystem import FileSensor
from airflow.sensors.time_delta import TimeDeltaSensor
from airflow.utils.dates import days_ago

dag = DAG(
    dag_id="classic_call",
    schedule_interval=timedelta(hours=6),
    start_date=days_ago(2),
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30)},
)

wait_file = FileSensor(
    task_id="wait_file", filepath="/data/{{ ds }}.csv", poke_interval=60, timeout=3600, mode="reschedule", dag=dag
)
wait_cmd = BashSensor(task_id="wait_cmd", bash_command="test -e /tmp/ready", dag=dag)
wait_api = HttpSensor(task_id="wait_api", http_conn_id="api", endpoint="health", dag=dag)
wait_dag = ExternalTaskSensor(
    task_id="wait_dag",
    external_dag_id="classic_with",
    external_task_id="end",
    execution_delta=timedelta(hours=1),
    dag=dag,
)
settle = TimeDeltaSensor(task_id="settle", delta=timedelta(minutes=2), dag=dag)
not_before = DateTimeSensor(task_id="not_before", target_time="{{ data_interval_end }}", dag=dag)
process = BashOperator(task_id="process", bash_command="echo process", dag=dag)
mail = EmailOperator(task_id="mail", to="boss@example.com", subject="Done {{ ds }}", html_content="<p>done</p>", dag=dag)
hook = SimpleHttpOperator(
    task_id="hook",
    http_conn_id="api",
    endpoint="/loads",
    method="POST",
    data='{"date": "{{ ds }}"}',
    headers={"Content-Type": "application/json"},
    dag=dag,
)
ding = DingdingOperator(task_id="ding", dingding_conn_id="ops", message_type="text", message="done {{ ds }}", at_all=False, dag=dag)
trigger = TriggerDagRunOperator(task_id="trigger", trigger_dag_id="classic_with", conf={"source": "classic_call"}, dag=dag)
final = BashOperator(task_id="final", bash_command="echo final", dag=dag)

chain(wait_file, [wait_cmd, wait_api], process)
cross_downstream([wait_dag, settle, not_before], [process])
chain(process, [mail, hook], [ding, trigger], final)
