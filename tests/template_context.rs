//! Airflow's template context through the real binary: `dags test` and `dags backfill` render a
//! batch of context names into a task's log, XComs pushed by one template are pulled by another,
//! `prev_*_success` come from the store, and template errors name the name and hide passwords.

mod common;

use common::Home;

const CONFIG: &str = r#"
[variables]
bucket = "s3://reports"
cfg = { a = 1, list = [1, 2] }

[connections.db]
uri = "postgresql://etl%40corp:s3cr%2Ft@DB.example.com:5433/sales?sslmode=require"

[connections.bad]
uri = "mysql://root:hunter2@host:99999/x"
"#;

/// One `printf` line per (label, template).
const SHOWN: &[(&str, &str)] = &[
    ("ds", "{{ ds }}"),
    ("ds_nodash", "{{ ds_nodash }}"),
    ("ts", "{{ ts }}"),
    ("ts_nodash", "{{ ts_nodash }}"),
    ("ts_nodash_with_tz", "{{ ts_nodash_with_tz }}"),
    ("prev_ds", "{{ prev_ds }} {{ prev_ds_nodash }}"),
    ("next_ds", "{{ next_ds }} {{ next_ds_nodash }}"),
    ("yesterday", "{{ yesterday_ds }} {{ yesterday_ds_nodash }}"),
    ("tomorrow", "{{ tomorrow_ds }} {{ tomorrow_ds_nodash }}"),
    (
        "dates",
        "{{ logical_date }} {{ execution_date | ds }} {{ data_interval_start | ds }} {{ data_interval_end | ds }}",
    ),
    ("aliases", "{{ prev_execution_date | ds }} {{ next_execution_date | ds }}"),
    ("prev_interval", "{{ prev_data_interval_start_success }} {{ prev_data_interval_end_success }}"),
    (
        "prev_dates",
        "{{ prev_start_date_success is not none }} {{ prev_end_date_success is not none }} {{ prev_execution_date_success }}",
    ),
    ("key", "{{ task_instance_key_str }}"),
    (
        "run",
        "{{ run_id == dag_run.run_id }} {{ dag_run.run_type }} {{ dag_run.external_trigger }} {{ dag_run.logical_date.year }}",
    ),
    ("ti", "{{ ti.try_number }} {{ task_instance.task_id }} {{ ti.dag_id }}"),
    ("pull", "{{ ti.xcom_pull(task_ids='first') }} {{ ti.xcom_pull(task_ids='first', key='k').n }}"),
    (
        "conn",
        "{{ conn.db.conn_type }} {{ conn.db.host }} {{ conn.db.login }} {{ conn.db.port }} {{ conn.db.schema }} {{ conn.db.extra_dejson.sslmode }}",
    ),
    (
        "var",
        "{{ var.value.bucket }} {{ var.value.get('nope', 'd') }} {{ var.json.cfg.list[1] }} {{ var.json.get('cfg').a }}",
    ),
    (
        "macros",
        "{{ macros.ds_add(ds, 3) }} {{ macros.ds_format(ds, '%Y-%m-%d', '%d/%m') }} {{ macros.timedelta(hours=1) }} {{ macros.datetime(2024, 1, 2).strftime('%j') }}",
    ),
    (
        "objects",
        "{{ logical_date.in_timezone('Asia/Shanghai').hour }} {{ logical_date.add(days=1) | ds }} {{ logical_date.isoformat() }} {{ logical_date.strftime('%Y/%m') }}",
    ),
    ("python", "{{ params.region.upper() }} {{ dag_run.conf.get('x', 'dflt') }} {{ params.items() | list }}"),
];

fn dag_file() -> String {
    let lines: Vec<String> = SHOWN.iter().map(|(label, template)| format!("\\\"{label}={template}\\\"")).collect();
    format!(
        r#"let dag = DAG("ctx", #{{ schedule: "@daily", start_date: datetime(2024, 1, 1), catchup: false, params: #{{ region: "eu" }} }});
let first = BashOperator(#{{ task_id: "first", bash_command: "echo 'x{{{{ ti.xcom_push(key=\"k\", value={{\"n\": 5}}) }}}}'; echo one" }});
let show = BashOperator(#{{ task_id: "show", bash_command: "printf '%s\\n' {}" }});
first >> show;
"#,
        lines.join(" ")
    )
}

fn home() -> Home {
    let home = Home::new(&[("ctx.rhai", &dag_file())]);
    std::fs::write(home.path().join("rhaiflow.toml"), CONFIG).unwrap();
    home
}

/// The `label=value` lines the `show` task printed in `run_id`.
fn shown(home: &Home, run_id: &str) -> std::collections::BTreeMap<String, String> {
    let log = common::unstamped(&home.log("ctx", run_id, "show"));
    log.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(label, _)| SHOWN.iter().any(|(l, _)| l == label))
        .map(|(l, v)| (l.to_string(), v.to_string()))
        .collect()
}

fn expect(got: &std::collections::BTreeMap<String, String>, want: &[(&str, &str)]) {
    for (label, value) in want {
        assert_eq!(got.get(*label).map(String::as_str), Some(*value), "`{label}` in {got:#?}");
    }
}

#[test]
fn dags_test_renders_airflows_context_and_prev_success_comes_from_the_store() {
    let home = home();
    let o = home.run(&["dags", "test", "ctx", "2024-03-09"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first = shown(&home, "manual__2024-03-09T00:00:00+00:00");
    assert_eq!(first.len(), SHOWN.len(), "every label printed: {first:#?}");
    expect(
        &first,
        &[
            ("ds", "2024-03-09"),
            ("ds_nodash", "20240309"),
            ("ts", "2024-03-09T00:00:00+00:00"),
            ("ts_nodash", "20240309T000000"),
            ("ts_nodash_with_tz", "20240309T000000+0000"),
            // A manual run: Airflow gives the logical date itself.
            ("prev_ds", "2024-03-09 20240309"),
            ("next_ds", "2024-03-09 20240309"),
            ("yesterday", "2024-03-08 20240308"),
            ("tomorrow", "2024-03-10 20240310"),
            ("dates", "2024-03-09T00:00:00+00:00 2024-03-09 2024-03-08 2024-03-09"),
            ("aliases", "2024-03-09 2024-03-09"),
            ("prev_interval", "None None"),
            ("prev_dates", "False False None"),
            ("key", "ctx__show__20240309"),
            ("run", "True manual True 2024"),
            ("ti", "1 show ctx"),
            ("pull", "one 5"),
            ("conn", "postgres db.example.com etl@corp 5433 sales require"),
            ("var", "s3://reports d 2 1"),
            ("macros", "2024-03-12 09/03 1:00:00 002"),
            ("objects", "8 2024-03-10 2024-03-09T00:00:00+00:00 2024/03"),
            ("python", "EU dflt [('region', 'eu')]"),
        ],
    );
    // The pushed XCom is a row of `first`, as Airflow writes it.
    let pushed: String = home
        .db()
        .query_row("SELECT value FROM xcom WHERE dag_id = 'ctx' AND task_id = 'first' AND key = 'k'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pushed, r#"{"n":5}"#);

    let o = home.run(&["dags", "test", "ctx", "2024-03-10"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let second = shown(&home, "manual__2024-03-10T00:00:00+00:00");
    expect(
        &second,
        &[
            ("prev_interval", "2024-03-08T00:00:00+00:00 2024-03-09T00:00:00+00:00"),
            ("prev_dates", "True True 2024-03-09T00:00:00+00:00"),
        ],
    );
}

#[test]
fn backfill_runs_get_the_schedules_neighbours() {
    let home = home();
    let o = home.run(&["dags", "backfill", "ctx", "--start-date", "2024-03-09", "--end-date", "2024-03-09"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got = shown(&home, "backfill__2024-03-09T00:00:00+00:00");
    expect(
        &got,
        &[
            ("prev_ds", "2024-03-08 20240308"),
            ("next_ds", "2024-03-10 20240310"),
            ("aliases", "2024-03-08 2024-03-10"),
            ("dates", "2024-03-09T00:00:00+00:00 2024-03-09 2024-03-09 2024-03-10"),
            ("run", "True backfill False 2024"),
        ],
    );
}

#[test]
fn template_errors_name_what_was_meant_and_never_the_password() {
    let home = Home::new(&[(
        "bad.rhai",
        r#"let dag = DAG("bad", #{ schedule: (), start_date: datetime(2024, 1, 1) });
BashOperator(#{ task_id: "typo", bash_command: "echo ok\necho {{ dss }}" });
BashOperator(#{ task_id: "conn", bash_command: "echo {{ conn.bad.host }}" });
BashOperator(#{ task_id: "var", bash_command: "echo {{ var.value.buckt }}" });
"#,
    )]);
    std::fs::write(home.path().join("rhaiflow.toml"), CONFIG).unwrap();
    let o = home.run(&["dags", "test", "bad", "2024-03-09"]);
    assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stderr));
    let run = "manual__2024-03-09T00:00:00+00:00";
    let typo = home.log("bad", run, "typo");
    assert!(
        typo.contains("template error in `bash_command` at line 2: `dss` is undefined — did you mean `ds`?"),
        "{typo}"
    );
    let conn = home.log("bad", run, "conn");
    assert!(
        conn.contains("connection `bad`: `[connections.bad] uri` is not valid: its port is not a number"),
        "{conn}"
    );
    let var = home.log("bad", run, "var");
    assert!(var.contains("variable `buckt` is not set — did you mean `bucket`?"), "{var}");
    let everything =
        format!("{typo}{conn}{var}{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!everything.contains("hunter2"), "{everything}");
}
