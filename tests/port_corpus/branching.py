"""Branching and short-circuits (classic and TaskFlow), Label edges, a TriggerRule enum."""
import random
from datetime import datetime

from airflow import DAG
from airflow.decorators import task
from airflow.operators.empty import EmptyOperator
from airflow.operators.python import BranchPythonOperator, ShortCircuitOperator
from airflow.utils.edgemodifier import Label
from airflow.utils.trigger_rule import TriggerRule

OPTIONS = ["branch_a", "branch_b", "branch_c"]


def choose():
    return random.choice(OPTIONS)


with DAG("branching", start_date=datetime(2024, 1, 1), schedule="@daily", catchup=False) as dag:
    run_this_first = EmptyOperator(task_id="run_this_first")
    branching = BranchPythonOperator(task_id="branching", python_callable=choose)
    run_this_first >> branching
    join = EmptyOperator(task_id="join", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    for option in OPTIONS:
        t = EmptyOperator(task_id=option)
        follow = EmptyOperator(task_id="follow_" + option)
        branching >> Label(option) >> t >> follow >> join

    @task.branch(task_id="decide")
    def decide_fn():
        return "yes"

    @task.short_circuit()
    def gate():
        return True

    yes = EmptyOperator(task_id="yes")
    no = EmptyOperator(task_id="no")
    d = decide_fn()
    join >> d
    d >> Label("ok") >> yes
    no << Label("not ok") << d
    cond = ShortCircuitOperator(task_id="condition", python_callable=lambda: False)
    [yes, no] >> gate() >> cond
