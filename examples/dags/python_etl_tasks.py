"""The functions `python_etl.rhai` runs: plain Python, as an Airflow DAG's PythonOperators call them."""


def extract():
    rows = [{"id": 1, "name": "ada"}, {"id": 2, "name": ""}, {"id": 3, "name": "grace"}]
    print("extracted %d rows" % len(rows))
    return rows


def transform(rows, day, params, ti):
    kept = [dict(row, day=day) for row in rows if row["name"]]
    ti.xcom_push(key="dropped", value=len(rows) - len(kept))
    print("kept %d rows for table %s" % (len(kept), params["table"]))
    return kept


def load(rows, dropped, **context):
    print("loading %d rows (%d dropped) in run %s" % (len(rows), dropped, context["run_id"]))
    return {"loaded": len(rows), "try_number": context["ti"].try_number}
