//! Property tests over generated and mutated configuration: loading never panics, every value out
//! of its bounds is an error, and no error shows a secret.
//!
//! Mostly through the library's loader (thousands of cases a second), and a few cases through the
//! binary, where a panic would be the user's.

use proptest::prelude::*;
use rhaiflow::config::{Config, Env, Flags};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

/// Secrets in the base file; spaces and `!` keep a mutation from turning one into a key name.
const SECRET: &str = "pa ss!w0rd~7731";
const ENV_SECRET: &str = "env s3cret!9143";

const BASE: &str = r#"[core]
dags_folder = "dags"
parallelism = 32
default_timezone = "UTC"
dag_file_timeout = 1.0
parse_threads = 2

[database]
url = "sqlite://rhaiflow.db"

[logging]
base_log_folder = "logs"
max_log_bytes = 10485760
level = "warn"

[scheduler]
catchup_by_default = true
shutdown_grace = 30.0
kill_grace = 5.0

[variables]
bucket = "s3://reports"

[alerts]
on_failure = ["email", "webhook.ops"]

[alerts.email]
host = "127.0.0.1"
port = 25
password = "pa ss!w0rd~7731"

[alerts.webhook.ops]
url = "http://127.0.0.1:9/hook"
headers = { Authorization = "pa ss!w0rd~7731" }
secret_env = "HOOK_SECRET"

[connections.warehouse]
uri = "pa ss!w0rd~7731"
"#;

fn load(text: &[u8], env: Vec<(OsString, OsString)>) -> Result<Config, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rhaiflow.toml"), text).unwrap();
    let flags = Flags { home: Some(dir.path().into()), ..Flags::default() };
    Config::load_env(&flags, Env::from_os(env)).map_err(|e| {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(SECRET) && !shown.contains(ENV_SECRET), "a secret in the error: {shown}");
        e.to_string()
    })
}

fn base_env() -> Vec<(OsString, OsString)> {
    vec![("HOOK_SECRET".into(), ENV_SECRET.into())]
}

#[test]
fn the_base_file_loads() {
    let c = load(BASE.as_bytes(), base_env()).unwrap();
    assert_eq!(c.alerts.email.unwrap().password.unwrap().expose(), SECRET);
}

/// One edit to the file's text, at a position taken modulo its length.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Insert(usize, char),
    Replace(usize, char),
    DuplicateLine(usize),
    DropLine(usize),
    SwapLines(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let ch = prop_oneof![
        prop::sample::select(vec!['"', '\'', '=', '[', ']', '{', '}', ',', '.', '#', '\\', '\n', ' ', '\t', '-', '+']),
        prop::sample::select(vec!['x', '1', '0', 'e', 'n', 'a', 'i', 'f', '_', 'é', '\u{0}', '\u{7f}', '\u{feff}']),
    ];
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), ch.clone()).prop_map(|(p, c)| Edit::Insert(p, c)),
        (any::<usize>(), ch).prop_map(|(p, c)| Edit::Replace(p, c)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::DropLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len().max(1);
        match *e {
            Edit::Delete(p) if !chars.is_empty() => {
                chars.remove(p % n);
            }
            Edit::Insert(p, c) => chars.insert(p % (chars.len() + 1), c),
            Edit::Replace(p, c) if !chars.is_empty() => chars[p % n] = c,
            Edit::DuplicateLine(p) | Edit::DropLine(p) | Edit::SwapLines(p, _) => {
                let s: String = chars.iter().collect();
                let mut lines: Vec<&str> = s.split('\n').collect();
                let i = p % lines.len();
                match *e {
                    Edit::DuplicateLine(_) => lines.insert(i, lines[i]),
                    Edit::DropLine(_) => {
                        lines.remove(i);
                    }
                    Edit::SwapLines(_, q) => {
                        let j = q % lines.len();
                        lines.swap(i, j);
                    }
                    _ => {}
                }
                chars = lines.join("\n").chars().collect();
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

/// A value for a number key: what a person might type, and what a fuzzer would.
#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

fn num() -> impl Strategy<Value = Num> {
    prop_oneof![
        (-10i64..20_000).prop_map(Num::Int),
        any::<i64>().prop_map(Num::Int),
        (-10.0f64..100_000.0).prop_map(Num::Float),
        any::<f64>().prop_map(Num::Float),
        prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 0.0, 1e300, -1e-300, 4e-7])
            .prop_map(Num::Float),
        prop::sample::select(vec![
            0i64,
            1,
            256,
            257,
            3600,
            3601,
            10_000,
            10_001,
            86_400,
            86_401,
            1 << 40,
            (1 << 40) + 1
        ])
        .prop_map(Num::Int),
    ]
}

/// (section, key, integer only, lowest, highest, lowest excluded): the bounds README documents.
const NUMBERS: &[(&str, &str, bool, f64, f64, bool)] = &[
    ("core", "parallelism", true, 1.0, 10_000.0, false),
    ("core", "dag_file_timeout", false, 0.0, 3_600.0, true),
    ("core", "task_script_timeout", false, 0.0, 604_800.0, true),
    ("core", "parse_threads", true, 0.0, 256.0, false),
    ("core", "max_tasks_per_dag", true, 1.0, 1_000_000.0, false),
    ("core", "max_edges_per_dag", true, 1.0, 10_000_000.0, false),
    ("core", "max_dag_file_memory_mib", true, 1.0, 4_096.0, false),
    ("scheduler", "shutdown_grace", false, 0.0, 86_400.0, false),
    ("scheduler", "kill_grace", false, 0.0, 86_400.0, false),
    ("scheduler", "task_heartbeat_timeout", false, 0.0, 604_800.0, true),
    ("logging", "max_log_bytes", true, 0.0, (1u64 << 40) as f64, false),
];

fn admitted(int_only: bool, lo: f64, hi: f64, lo_excluded: bool, v: Num) -> bool {
    let x = match v {
        Num::Int(i) => i as f64,
        Num::Float(_) if int_only => return false,
        Num::Float(f) => f,
    };
    (if lo_excluded { x > lo } else { x >= lo }) && x <= hi
}

fn toml_number(v: Num) -> toml::Value {
    match v {
        Num::Int(i) => toml::Value::Integer(i),
        Num::Float(f) => toml::Value::Float(f),
    }
}

/// The env-var spelling of a number (TOML's, which is what the loader reads back).
fn env_number(v: Num) -> String {
    let mut t = toml::Table::new();
    t.insert("v".into(), toml_number(v));
    toml::to_string(&t).unwrap().trim_start_matches("v = ").trim_end().to_string()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_never_panic_or_show_a_secret(edits in prop::collection::vec(edit(), 1..6)) {
        let text = apply(BASE, &edits);
        let _ = load(text.as_bytes(), base_env());
    }

    #[test]
    fn every_number_out_of_bounds_is_an_error_and_every_one_inside_loads(
        values in prop::collection::vec(num(), NUMBERS.len()),
    ) {
        let mut tree = toml::Table::new();
        for ((section, key, ..), v) in NUMBERS.iter().zip(&values) {
            let table = tree.entry(*section).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table.as_table_mut().unwrap().insert((*key).into(), toml_number(*v));
        }
        let text = toml::to_string(&tree).unwrap();
        let all_good = NUMBERS.iter().zip(&values).all(|(&(_, _, i, lo, hi, ex), v)| admitted(i, lo, hi, ex, *v));
        match load(text.as_bytes(), Vec::new()) {
            Ok(_) => prop_assert!(all_good, "loaded although a value is out of bounds:\n{text}"),
            Err(e) => {
                prop_assert!(!all_good, "refused good values:\n{text}\n{e}");
                prop_assert!(e.starts_with("config key `"), "{e}");
            }
        }
    }

    #[test]
    fn a_number_from_the_environment_is_held_to_the_same_bounds(index in 0..NUMBERS.len(), v in num()) {
        let (section, key, int_only, lo, hi, ex) = NUMBERS[index];
        let var = format!("RHAIFLOW__{}__{}", section.to_uppercase(), key.to_uppercase());
        let env = vec![(OsString::from(&var), OsString::from(env_number(v)))];
        match load(b"", env) {
            Ok(_) => prop_assert!(admitted(int_only, lo, hi, ex, v), "{var}={}", env_number(v)),
            Err(e) => {
                prop_assert!(!admitted(int_only, lo, hi, ex, v), "{var}={}: {e}", env_number(v));
                prop_assert!(e.contains(&format!("(from environment variable {var})")), "{e}");
            }
        }
    }

    #[test]
    fn any_environment_never_panics_or_shows_a_secret(
        vars in prop::collection::vec(
            (
                prop_oneof![
                    Just("RHAIFLOW__CORE__PARALLELISM".to_string()),
                    Just("RHAIFLOW__ALERTS__EMAIL__SECRET_ENV".to_string()),
                    Just("RHAIFLOW__ALERTS__EMAIL__PASSWORD_ENV".to_string()),
                    Just("RHAIFLOW__SCHEDULER__KILL_GRACE".to_string()),
                    Just("RHAIFLOW_HOME_NOT".to_string()),
                    "RHAIFLOW__[A-Z_]{0,20}",
                    "[A-Z_]{1,12}",
                ],
                prop_oneof![
                    "[ -~]{0,20}".prop_map(String::into_bytes),
                    prop::collection::vec(any::<u8>(), 0..12),
                ],
            ),
            0..6,
        ),
    ) {
        // The secret goes only where a secret belongs; other variables get anything at all.
        let mut env: Vec<(OsString, OsString)> = vec![
            ("RHAIFLOW__ALERTS__EMAIL__PASSWORD".into(), ENV_SECRET.into()),
            ("HOOK_SECRET".into(), ENV_SECRET.into()),
        ];
        env.extend(vars.into_iter().map(|(k, v)| (OsString::from(k), OsString::from_vec(v))));
        let rhaiflow_not_utf8 = env
            .iter()
            .filter(|(k, _)| k.to_string_lossy().starts_with("RHAIFLOW__"))
            .any(|(_, v)| v.to_str().is_none());
        let result = load(BASE.as_bytes(), env);
        if rhaiflow_not_utf8 {
            let e = result.err().unwrap_or_default();
            prop_assert!(e.contains("is not valid UTF-8"), "{e}");
        }
    }
}

fn run_binary(home: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rhaiflow"))
        .args(["dags", "list", "--now", "2026-01-15T12:00:00Z"])
        .current_dir(home)
        .env_remove("RHAIFLOW_HOME")
        .env_remove("RUST_BACKTRACE")
        .env("HOOK_SECRET", ENV_SECRET)
        .output()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn mutated_files_through_the_binary_exit_0_or_2_with_no_panic(
        edits in prop::collection::vec(edit(), 1..6),
        values in prop::collection::vec(num(), 2),
    ) {
        let mut text = apply(BASE, &edits);
        text = text.replace("kill_grace = 5.0", &format!("kill_grace = {}", env_number(values[0])));
        text = text.replace("shutdown_grace = 30.0", &format!("shutdown_grace = {}", env_number(values[1])));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dags")).unwrap();
        std::fs::write(dir.path().join("rhaiflow.toml"), &text).unwrap();
        let o = run_binary(dir.path());
        let err = String::from_utf8_lossy(&o.stderr);
        prop_assert!(matches!(o.status.code(), Some(0) | Some(2)), "{:?}: {err}\n{text}", o.status);
        prop_assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}\n{text}");
        prop_assert!(!err.contains(SECRET) && !err.contains(ENV_SECRET), "{err}");
        if o.status.code() == Some(2) {
            prop_assert!(err.starts_with("error: "), "{err}");
        }
    }
}
