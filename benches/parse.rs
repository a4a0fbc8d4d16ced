//! Parse benchmark: how long loading a dags folder takes (scan, evaluate every Rhai file, validate
//! every graph and timetable), and how long a whole `rhaiflow dags list` process takes.
//!
//! Run it with `scripts/bench` (builds the release binary first and prints the combined table), or
//! alone with `cargo bench --bench parse [-- FILTER]`. Plain `fn main` (harness = false), timing with
//! `std::time::Instant`: every row is the median of several iterations after a warm-up.
//!
//! Each folder benchmark creates one `Loader` and calls `load_all` on it again and again, as the
//! long-running scheduler does: the loader keeps its thread pool and its per-thread engines between
//! loads, so this measures re-parsing, not start-up. The whole-process row covers start-up.
//!
//! Every load must have zero import errors (it panics otherwise), so a benchmark can never time a
//! failure that happens to be fast.
//!
//! The table goes to stdout. On stderr, each row also gets min/max and CPU time per load. On a shared
//! 2-core VM, wall time is noisy and CPU time is steadier. A `breakdown` section (also runnable alone:
//! `-- breakdown`) times the pieces on one thread; BENCHMARKS.md explains the figures.
//!
//! Environment:
//! - `RHAIFLOW_BIN`: the release binary for the process row (default
//!   `$CARGO_TARGET_DIR/release/rhaiflow`, else `target/release/rhaiflow`); the row is skipped when
//!   it is missing.
//! - `BENCH_TABLE_ROWS`: a file to append the table's rows to (no header); `scripts/bench` uses it to
//!   merge the rows of several benchmarks into one table.

use chrono::Utc;
use rhaiflow::loader::{DagBag, Loader, LoaderSettings};
use rhaiflow::script::{EvalContext, ScriptHost, ScriptLimits};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One row of the table.
struct Row {
    name: String,
    median: Option<Duration>,
    /// Upper bound we promised, if any.
    target: Option<Duration>,
    airflow: &'static str,
    /// Why there is no measurement.
    skipped: Option<String>,
}

fn main() {
    // `cargo bench` passes `--bench`; anything else that is not a flag is a name filter.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    eprintln!("parse benchmark: {cores} core(s), loader threads = one per core; {}", load_average());

    let mut rows = Vec::new();
    if wanted("100 files") {
        rows.push(folder_bench(
            "parse + validate 100 files × 10 tasks",
            &files_of_ten_tasks(100),
            100 * 10,
            51,
            Some(ms(15)),
            "0.33 s re-parse (0.69 s in a fresh process)",
        ));
    }
    if wanted("1,000 files") {
        rows.push(folder_bench(
            "parse + validate 1,000 files × 10 tasks",
            &files_of_ten_tasks(1000),
            1000 * 10,
            21,
            Some(ms(100)),
            "–",
        ));
    }
    if wanted("1,000-task") {
        rows.push(folder_bench(
            "one 1,000-task DAG, one `let` per task",
            &[("wide_lets.rhai".to_string(), dag_of_lets(1000))],
            1000,
            31,
            Some(ms(25)),
            "0.17 s",
        ));
    }
    if wanted("10,000-task") {
        rows.push(folder_bench(
            "one 10,000-task DAG built in a loop",
            &[("wide_loop.rhai".to_string(), dag_of_loop(10_000))],
            10_001,
            15,
            None,
            "–",
        ));
    }
    if wanted("dags list") {
        rows.push(process_bench(20));
    }
    if wanted("breakdown") {
        breakdown();
    }

    let table = render(&rows);
    println!("\n{HEADER}\n{table}");
    if let Ok(path) = std::env::var("BENCH_TABLE_ROWS") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open BENCH_TABLE_ROWS={path}: {e}"));
        f.write_all(table.as_bytes()).expect("write table rows");
    }
    eprintln!("done; {}", load_average());
    let missed: Vec<&str> = rows
        .iter()
        .filter(|r| matches!((r.median, r.target), (Some(m), Some(t)) if m > t))
        .map(|r| r.name.as_str())
        .collect();
    if !missed.is_empty() {
        eprintln!("target missed: {}", missed.join("; "));
    }
}

const HEADER: &str = "| benchmark | median | target | Airflow 2.10 on this machine |\n|---|---:|---|---|";

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let median = match (&r.median, &r.skipped) {
            (Some(m), _) => fmt(*m),
            (None, Some(why)) => format!("skipped ({why})"),
            (None, None) => "–".into(),
        };
        let target = match (r.target, r.median) {
            (Some(t), Some(m)) if m <= t => format!("≤ {} (met)", fmt(t)),
            (Some(t), Some(_)) => format!("≤ {} (**MISSED**)", fmt(t)),
            (Some(t), None) => format!("≤ {}", fmt(t)),
            (None, _) => "none set".into(),
        };
        writeln!(out, "| {} | {} | {} | {} |", r.name, median, target, r.airflow).unwrap();
    }
    out
}

/// Other work on the machine skews every number; say how busy it was.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    format!("load average {}", fields.join(" "))
}

/// User + system CPU time of this whole process (every thread) so far, from /proc (Linux only;
/// 10 ms resolution, fine over a few seconds of iterations). Wall time on a shared 2-core machine
/// is noisy; CPU time shows whether a change did less work or was just luckier.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) (utime, stime), counted from the state field (3).
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fmt(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if d.subsec_nanos().is_multiple_of(1_000_000) && d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1e3)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    let n = samples.len();
    if !n.is_multiple_of(2) { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2 }
}

fn eval_context() -> EvalContext {
    EvalContext {
        now: Utc::now(),
        default_timezone: chrono_tz::UTC,
        catchup_by_default: true,
        default_owner: "rhaiflow".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// DAG files

/// `n` files, each one DAG of 10 `BashOperator`s chained `t0 >> t1 >> … >> t9`.
fn files_of_ten_tasks(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("dag_{i:04}.rhai"), ten_task_file(&format!("d{i:04}")))).collect()
}

fn ten_task_file(dag_id: &str) -> String {
    let mut s = String::new();
    writeln!(s, "let dag = DAG(\"{dag_id}\", #{{ start_date: days_ago(1), schedule: \"@daily\" }});").unwrap();
    for t in 0..10 {
        writeln!(s, "let t{t} = BashOperator(#{{ task_id: \"t{t}\", bash_command: \"echo {t}\" }});").unwrap();
    }
    let chain: Vec<String> = (0..10).map(|t| format!("t{t}")).collect();
    writeln!(s, "{};", chain.join(" >> ")).unwrap();
    s
}

/// One DAG of `n` tasks written as `n` top-level `let`s; edges one statement each (a single `>>`
/// chain of this length would hit the expression-depth limit, by design).
fn dag_of_lets(n: usize) -> String {
    let mut s = String::from("let dag = DAG(\"wide_lets\", #{ start_date: days_ago(1), schedule: \"@daily\" });\n");
    for t in 0..n {
        writeln!(s, "let t{t} = BashOperator(#{{ task_id: \"t{t}\", bash_command: \"echo {t}\" }});").unwrap();
    }
    for t in 1..n {
        writeln!(s, "t{} >> t{t};", t - 1).unwrap();
    }
    s
}

/// One DAG of `n` + 1 tasks built in a loop, each downstream of the previous one.
fn dag_of_loop(n: usize) -> String {
    format!(
        r#"let dag = DAG("wide_loop", #{{ start_date: days_ago(1), schedule: "@daily" }});
let prev = EmptyOperator(#{{ task_id: "start" }});
for i in 0..{n} {{
    let t = EmptyOperator(#{{ task_id: `t${{i}}` }});
    prev >> t;
    prev = t;
}}
"#
    )
}

fn write_folder(files: &[(String, String)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("rhaiflow-bench-").tempdir().expect("temp dir");
    for (name, source) in files {
        std::fs::write(dir.path().join(name), source).expect("write DAG file");
    }
    dir
}

fn check(bag: &DagBag, what: &str, dags: usize, tasks: usize) {
    if !bag.import_errors.is_empty() {
        let first = &bag.import_errors[0];
        let text: Vec<String> = first.diagnostics.iter().map(|d| d.to_string()).collect();
        panic!(
            "{what}: {} import error(s); the benchmark must not time failures. First, {}:\n{}",
            bag.import_errors.len(),
            first.file,
            text.join("\n")
        );
    }
    let loaded_tasks: usize = bag.dags.values().map(|d| d.spec.tasks.len()).sum();
    assert_eq!(bag.dags.len(), dags, "{what}: DAGs loaded");
    assert_eq!(loaded_tasks, tasks, "{what}: tasks loaded");
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

const WARM_UP: usize = 3;

/// Loads a folder `iterations` times with one loader (after a warm-up) and reports the median.
fn folder_bench(
    name: &str,
    files: &[(String, String)],
    expected_tasks: usize,
    iterations: usize,
    target: Option<Duration>,
    airflow: &'static str,
) -> Row {
    let dir = write_folder(files);
    let expected_dags = files.len();
    let ctx = eval_context();

    let started = Instant::now();
    let loader = Loader::new(settings(dir.path())).expect("loader starts");
    let new_loader = started.elapsed();
    for _ in 0..WARM_UP {
        check(&loader.load_all(&ctx).expect("folder loads"), name, expected_dags, expected_tasks);
    }
    let mut samples = Vec::with_capacity(iterations);
    let cpu_before = cpu_time();
    for _ in 0..iterations {
        let t = Instant::now();
        let bag = loader.load_all(&ctx).expect("folder loads");
        samples.push(t.elapsed());
        check(&bag, name, expected_dags, expected_tasks);
        drop(bag);
    }
    let cpu = match (cpu_before, cpu_time()) {
        (Some(a), Some(b)) => {
            let per_load = (b - a) / iterations as u32;
            let wall: Duration = samples.iter().sum::<Duration>() / iterations as u32;
            format!("CPU {} per load ({:.2} cores busy)", fmt(per_load), per_load.as_secs_f64() / wall.as_secs_f64())
        }
        _ => "CPU time unknown".into(),
    };
    let (lo, hi) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
    let m = median(samples);
    eprintln!(
        "{name}: median {} (min {}, max {}, n = {iterations}); {cpu}; {expected_dags} file(s), {expected_tasks} task(s); \
         {:.1} µs/file, {:.2} µs/task; Loader::new {}",
        fmt(m),
        fmt(lo),
        fmt(hi),
        m.as_secs_f64() * 1e6 / expected_dags as f64,
        m.as_secs_f64() * 1e6 / expected_tasks as f64,
        fmt(new_loader),
    );
    Row { name: name.into(), median: Some(m), target, airflow, skipped: None }
}

fn settings(folder: &Path) -> LoaderSettings {
    LoaderSettings { dags_folder: folder.to_path_buf(), limits: ScriptLimits::default(), threads: 0 }
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RHAIFLOW_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| "target".into());
    root.join(target).join("release").join(format!("rhaiflow{}", std::env::consts::EXE_SUFFIX))
}

/// `rhaiflow dags list --dags-folder examples/dags` as a whole process, from the repository root.
fn process_bench(iterations: usize) -> Row {
    let name = "`rhaiflow dags list --dags-folder examples/dags` (whole process, wall)";
    let airflow = "`airflow version` alone: 2.2 s";
    let target = Some(ms(20));
    let bin = binary();
    if !bin.is_file() {
        let why = format!("no binary at {}; run scripts/bench or set RHAIFLOW_BIN", bin.display());
        eprintln!("{name}: {why}");
        return Row { name: name.into(), median: None, target, airflow, skipped: Some("binary not built".into()) };
    }
    let run = || {
        let mut cmd = Command::new(&bin);
        cmd.args(["dags", "list", "--dags-folder", "examples/dags"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The process must not pick up a developer's own configuration.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("RHAIFLOW_") {
                cmd.env_remove(k);
            }
        }
        let t = Instant::now();
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let took = t.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} failed ({}):\n{stderr}", out.status);
        assert!(!stderr.contains("failed to load"), "{name}: examples/dags has import errors:\n{stderr}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("MCWork"), "{name}: MCWork is not listed");
        took
    };
    for _ in 0..WARM_UP {
        run();
    }
    let samples: Vec<Duration> = (0..iterations).map(|_| run()).collect();
    let (lo, hi) = (*samples.iter().min().unwrap(), *samples.iter().max().unwrap());
    let m = median(samples);
    eprintln!("{name}: median {} (min {}, max {}, n = {iterations}); {}", fmt(m), fmt(lo), fmt(hi), bin.display());
    Row { name: name.into(), median: Some(m), target, airflow, skipped: None }
}

/// Median of `n` timed calls of `f` after a warm-up.
fn time(n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..WARM_UP {
        f();
    }
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

/// Where the time goes, single-threaded, printed to stderr only: the fixed costs (stdlib compile,
/// engine creation) and the cost of one file on a reused engine.
fn breakdown() {
    let ctx = eval_context();
    let host_new = time(11, || drop(ScriptHost::new(ScriptLimits::default()).expect("stdlib")));
    let host = ScriptHost::new(ScriptLimits::default()).expect("stdlib");
    let engine_new = time(21, || drop(host.engine()));
    let ten = ten_task_file("d0");
    let mut engine = host.engine();
    let ten_eval = time(201, || {
        let out = engine.evaluate("d0.rhai", &ten, &ctx);
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    });
    let lets = dag_of_lets(1000);
    let lets_eval = time(11, || {
        let out = engine.evaluate("wide_lets.rhai", &lets, &ctx);
        assert!(out.diagnostics.is_empty());
    });
    let looped_1000 = dag_of_loop(1000);
    let loop_1000_eval = time(21, || {
        let out = engine.evaluate("wide_loop.rhai", &looped_1000, &ctx);
        assert!(out.diagnostics.is_empty());
    });
    let looped = dag_of_loop(10_000);
    let loop_eval = time(5, || {
        let out = engine.evaluate("wide_loop.rhai", &looped, &ctx);
        assert!(out.diagnostics.is_empty());
    });
    // Compile alone, with a bare Rhai engine (no DAG API registered, so only the parser's cost),
    // with and without Rhai's AST optimiser (on by default, as in the loader).
    let bare = rhai::Engine::new();
    let mut unoptimised = rhai::Engine::new();
    unoptimised.set_optimization_level(rhai::OptimizationLevel::None);
    let ten_compile = time(201, || drop(bare.compile(&ten).expect("compiles")));
    // Rhai's string interner (256 entries by default) evicts by scanning all its entries.
    let interned = |max: usize| {
        let mut e = rhai::Engine::new();
        e.set_max_strings_interned(max);
        e
    };
    let (no_interner, big_interner) = (interned(0), interned(1 << 16));
    let lets_1000 = dag_of_lets(1000);
    let interner_lets = [
        time(11, || drop(no_interner.compile(&lets_1000).expect("compiles"))),
        time(11, || drop(big_interner.compile(&lets_1000).expect("compiles"))),
    ];
    let thousand_files = files_of_ten_tasks(1000);
    let compile_files = |e: &rhai::Engine| {
        time(5, || {
            for (_, src) in &thousand_files {
                drop(e.compile(src).expect("compiles"));
            }
        })
    };
    let interner_files = [compile_files(&bare), compile_files(&no_interner), compile_files(&big_interner)];
    // Fixed per-file cost vs per-task cost: files of 1, 10, 100 and 300 tasks on the reused engine.
    let mut sizes = Vec::new();
    for n in [1usize, 10, 100, 300] {
        let mut src = String::from("let dag = DAG(\"sized\", #{ start_date: days_ago(1), schedule: \"@daily\" });\n");
        for t in 0..n {
            writeln!(src, "let t{t} = BashOperator(#{{ task_id: \"t{t}\", bash_command: \"echo {t}\" }});").unwrap();
        }
        for t in 1..n {
            writeln!(src, "t{} >> t{t};", t - 1).unwrap();
        }
        sizes.push((
            n,
            time(101, || {
                let out = engine.evaluate("sized.rhai", &src, &ctx);
                assert!(out.diagnostics.is_empty());
            }),
        ));
    }
    let mut lets_compile = Vec::new();
    for n in [250, 500, 1000, 2000] {
        let src = dag_of_lets(n);
        let no_edges: String = src.lines().filter(|l| !l.contains(">>")).map(|l| format!("{l}\n")).collect();
        let iters = if n > 1000 { 3 } else { 11 };
        lets_compile.push((
            n,
            time(iters, || drop(bare.compile(&src).expect("compiles"))),
            time(iters, || drop(unoptimised.compile(&src).expect("compiles"))),
            time(iters, || drop(bare.compile(&no_edges).expect("compiles"))),
        ));
    }

    // A 1,000-file folder: one vs. two loader threads, and the per-DAG work the loader does besides
    // evaluating (graph, timetable, JSON + SHA-256 for the version hash).
    let dir = write_folder(&files_of_ten_tasks(1000));
    let one = Loader::new(LoaderSettings { threads: 1, ..settings(dir.path()) }).expect("loader starts");
    let two = Loader::new(settings(dir.path())).expect("loader starts");
    let load_one = time(5, || check(&one.load_all(&ctx).expect("loads"), "1 thread", 1000, 10_000));
    let load_two = time(5, || check(&two.load_all(&ctx).expect("loads"), "2 threads", 1000, 10_000));
    let scan = time(11, || drop(two.scan().expect("scan")));
    let read = time(11, || {
        for p in two.scan().expect("scan") {
            drop(std::fs::read_to_string(p).expect("read"));
        }
    });
    let bag = two.load_all(&ctx).expect("loads");
    let specs: Vec<_> = bag.dags.values().map(|d| d.spec.clone()).collect();
    let graphs = time(11, || {
        for s in &specs {
            drop(rhaiflow::graph::TaskGraph::build(s).expect("graph"));
        }
    });
    let timetables = time(11, || {
        for s in &specs {
            drop(rhaiflow::schedule::Timetable::new(s).expect("timetable"));
        }
    });
    let json_hash = time(11, || {
        use sha2::Digest as _;
        for s in &specs {
            std::hint::black_box(sha2::Sha256::digest(s.to_json().as_bytes()));
        }
    });
    let evaluate_all = time(5, || {
        for (i, s) in files_of_ten_tasks(1000).iter().enumerate() {
            let out = engine.evaluate(&s.0, &s.1, &ctx);
            assert!(out.diagnostics.is_empty(), "file {i}");
        }
    });

    eprintln!("breakdown (one thread, reused engine unless said):");
    eprintln!("  ScriptHost::new (stdlib compile, per process)      {}", fmt(host_new));
    eprintln!("  ScriptHost::engine (per parse thread)              {}", fmt(engine_new));
    eprintln!("  evaluate one 10-task file                          {}", fmt(ten_eval));
    eprintln!("    of which Rhai compile alone (bare engine)        {}", fmt(ten_compile));
    eprintln!("  evaluate the 1,000-let file                        {}", fmt(lets_eval));
    eprintln!("  Rhai compile alone (bare engine) of the N-let file: optimised / unoptimised / without the edge lines");
    for (n, opt, unopt, no_edges) in lets_compile {
        eprintln!("    N = {n:>5}: {:>9} / {:>9} / {:>9}", fmt(opt), fmt(unopt), fmt(no_edges));
    }
    eprintln!(
        "    N = 1,000 with the interner off / at 65,536 entries: {} / {}",
        fmt(interner_lets[0]),
        fmt(interner_lets[1])
    );
    eprintln!(
        "  Rhai compile alone of 1,000 10-task files, interner 256 (default) / off / 65,536: {} / {} / {}",
        fmt(interner_files[0]),
        fmt(interner_files[1]),
        fmt(interner_files[2])
    );
    eprintln!("  evaluate one file of N tasks (DAG + N lets + N-1 edges):");
    for (n, d) in &sizes {
        eprintln!("    N = {n:>3}: {}", fmt(*d));
    }
    eprintln!("  evaluate a 1,000-task loop file                    {}", fmt(loop_1000_eval));
    eprintln!("  evaluate the 10,000-task loop file                 {}", fmt(loop_eval));
    eprintln!("  1,000 files x 10 tasks:");
    eprintln!("    load_all, 1 thread                               {}", fmt(load_one));
    eprintln!("    load_all, 1 per core                             {}", fmt(load_two));
    eprintln!("    evaluate all 1,000 (one engine, no loader)       {}", fmt(evaluate_all));
    eprintln!("    scan                                             {}", fmt(scan));
    eprintln!("    scan + read every file                           {}", fmt(read));
    eprintln!("    TaskGraph::build x 1,000                         {}", fmt(graphs));
    eprintln!("    Timetable::new x 1,000                           {}", fmt(timetables));
    eprintln!("    to_json + SHA-256 x 1,000 (serial, in assemble)  {}", fmt(json_hash));
}
