"""Task groups: nested with-blocks, prefix_group_id=False, groups in edges, @task_group called twice."""
from datetime import datetime

from airflow import DAG
from airflow.decorators import task, task_group
from airflow.operators.bash import BashOperator
from airflow.operators.empty import EmptyOperator
from airflow.utils.task_group import TaskGroup

with DAG(dag_id="groups", start_date=datetime(2024, 1, 1), schedule="@daily") as dag:
    start = EmptyOperator(task_id="start")
    with TaskGroup("section_1", tooltip="Tasks for section_1") as section_1:
        task_1 = EmptyOperator(task_id="task_1")
        task_2 = BashOperator(task_id="task_2", bash_command="echo 1")
        task_3 = EmptyOperator(task_id="task_3")
        task_1 >> [task_2, task_3]
    with TaskGroup("section_2", tooltip="Tasks for section_2") as section_2:
        task_1 = EmptyOperator(task_id="task_1")
        with TaskGroup("inner_section_2", tooltip="Tasks for inner_section2") as inner_section_2:
            task_2 = BashOperator(task_id="task_2", bash_command="echo 1")
            task_3 = EmptyOperator(task_id="task_3")
            task_4 = EmptyOperator(task_id="task_4")
            [task_2, task_3] >> task_4
    with TaskGroup("flat", prefix_group_id=False) as flat:
        unprefixed = EmptyOperator(task_id="unprefixed")
    end = EmptyOperator(task_id="end")
    start >> section_1 >> section_2 >> flat >> end

    @task
    def add(x, y):
        return x + y

    @task_group
    def math_group(n):
        a = add(n, 1)
        return add(a, 2)

    first = math_group(1)
    second = math_group(first)
    end >> first
