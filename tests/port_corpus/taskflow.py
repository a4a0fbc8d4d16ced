"""TaskFlow: @dag, @task, results passed as arguments (XComArgs), repeated calls, override."""
import json

import pendulum

from airflow.decorators import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2021, 1, 1, tz="UTC"), catchup=False, tags=["example"])
def taskflow_etl():
    @task()
    def extract():
        data_string = '{"1001": 301.27, "1002": 433.21, "1003": 502.22}'
        return json.loads(data_string)

    @task(multiple_outputs=True)
    def transform(order_data_dict: dict):
        total = 0
        for value in order_data_dict.values():
            total += value
        return {"total_order_value": total}

    @task
    def load(total_order_value: float):
        print(f"Total order value is: {total_order_value:.2f}")

    @task(retries=2)
    def report(value, label="x"):
        print(label, value)

    order_data = extract()
    order_summary = transform(order_data)
    load(order_summary["total_order_value"])
    report(order_data)
    report(order_data, label="again")
    report.override(task_id="custom_report")(order_summary)


taskflow_etl()
