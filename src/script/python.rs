//! Python habits in a DAG file: when a file does not compile, its Rhai token stream is read for the
//! forms an Airflow user writes out of habit (`True`, `timedelta(minutes=5)`, `'p1'`, `{"a": 1}`,
//! `with DAG(...) as dag:`, `from airflow import ...`, `def`, `lambda`, list comprehensions, `#`
//! comments, docstrings, ...), and each becomes a message that names the Python form and shows the
//! Rhai one, with the caret on it. Also the Airflow names rhaiflow lacks, and what to use instead.

use crate::model::SourcePos;
use rhai::{Engine, LexError, Token};

/// One Python form found in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Habit {
    pub pos: SourcePos,
    pub message: String,
    pub help: Option<String>,
}

impl Habit {
    fn new(pos: SourcePos, message: impl Into<String>) -> Self {
        Habit { pos, message: message.into(), help: None }
    }

    fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Tokens read at most: a hand-ported file is far smaller; a generated one gets the parse error.
const MAX_TOKENS: usize = 200_000;

/// Habits reported at most per file; the rest would repeat what these already say.
pub const MAX_HABITS: usize = 30;

/// Columns past this are not quoted in messages: finding them costs a walk along the line.
const MAX_COLUMN: usize = 4096;

/// Longest rewritten form shown in a message, in characters.
const MAX_SHOWN: usize = 90;

/// Advice for an Airflow name rhaiflow does not have: what to write instead.
pub struct Advice {
    pub message: String,
    pub help: String,
}

/// What to use instead of an Airflow (or Python) name that a DAG file cannot call; `None` for
/// names that are not Airflow's.
pub fn airflow_name(name: &str) -> Option<Advice> {
    let advice = |message: String, help: &str| Some(Advice { message, help: help.to_string() });
    let missing = format!("rhaiflow has no `{name}`");
    match name {
        "PythonVirtualenvOperator" | "ExternalPythonOperator" => advice(
            format!("{missing}: it makes no virtualenv"),
            "run the function with `PythonOperator(#{ task_id: \"t\", python_callable: \"module:function\", \
             python: \"/path/to/venv\" })` (an existing virtualenv), or write it as a Rhai closure with \
             `RhaiOperator(#{ task_id: \"t\", callable: |ctx| { ... } })`",
        ),
        "SqlOperator"
        | "SQLExecuteQueryOperator"
        | "PostgresOperator"
        | "MySqlOperator"
        | "SqliteOperator"
        | "MsSqlOperator"
        | "OracleOperator"
        | "SnowflakeOperator"
        | "BigQueryInsertJobOperator" => advice(
            format!("{missing}: rhaiflow has no SQL operators"),
            "run the database's client from a `BashOperator`, e.g. `bash_command: \"psql \\\"$DB_URL\\\" -f query.sql\"`",
        ),
        "KubernetesPodOperator" | "DockerOperator" | "SSHOperator" | "SparkSubmitOperator" => advice(
            missing,
            "run the command from a `BashOperator`, e.g. `bash_command: \"kubectl run ...\"`, `\"docker run ...\"` or \
             `\"ssh host ...\"`",
        ),
        "Variable" => advice(
            "`Variable` is not available while a DAG file is parsed: a DAG file does no I/O".into(),
            "read a variable when the task runs, in a templated field: `{{ var.value.NAME }}` (set in `[variables]` of rhaiflow.toml)",
        ),
        "XCom" => advice(
            "`XCom` is not available in a DAG file".into(),
            "a `BashOperator` pushes its last line of output; read it in a templated field with \
             `{{ ti.xcom_pull(task_ids='task_id') }}`",
        ),
        "TriggerRule" => advice(
            "`TriggerRule` is Python: a trigger rule is a string in rhaiflow".into(),
            "write `trigger_rule: \"all_done\"` (the lower-case name of the rule)",
        ),
        "Param" => advice(
            "`Param` is Python: params are plain values in rhaiflow".into(),
            "write `params: #{ name: \"default value\" }`",
        ),
        "Dataset" => advice(
            format!("{missing}: data-aware scheduling is not supported"),
            "use a schedule, or `TriggerDagRunOperator` / `ExternalTaskSensor` to join DAGs",
        ),
        "pendulum" => advice(
            "`pendulum` is Python: dates are built in".into(),
            "write `datetime(2024, 1, 1)` and give the DAG `timezone: \"Asia/Shanghai\"`",
        ),
        "airflow" => advice(
            "`airflow` is Python: rhaiflow's DAG API is built in".into(),
            "call `DAG`, the operators, `days_ago`, `timedelta`, ... directly",
        ),
        "os" | "sys" | "subprocess" | "open" | "requests" => advice(
            format!("`{name}` is Python, and a DAG file does no I/O"),
            "do the work in a task (a `BashOperator` can read `$VARIABLES` and files when it runs)",
        ),
        "len" => advice("`len(x)` is Python: write `x.len()`".into(), "Rhai calls most functions as methods"),
        "str" => advice("`str(x)` is Python: write `x.to_string()`".into(), "Rhai calls most functions as methods"),
        "int" => advice("`int(x)` is Python: write `parse_int(x)`".into(), "Rhai converts text with `parse_int`"),
        "__doc__" => advice(
            "`__doc__` is Python: a DAG file has no docstring to read".into(),
            "write the text itself: `dag.doc_md = \"...\";`",
        ),
        // Only reached as a variable (`datetime.datetime(...)`): the functions themselves exist.
        "datetime" | "timedelta" => advice(
            format!(
                "`{name}` is a function here, not a Python module: call `datetime(...)` or `timedelta(...)` directly"
            ),
            "`datetime(2024, 1, 1)`, `timedelta(#{ minutes: 5 })`; `days_ago(1)` and `minutes(5)` too",
        ),
        _ => None,
    }
}

/// Where each line starts, to turn token positions into byte offsets.
struct Lines<'a> {
    source: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(source: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Lines { source, starts }
    }

    /// The byte offset of a 1-based line and column (columns count characters).
    fn offset(&self, pos: SourcePos) -> usize {
        let Some(&start) = self.starts.get(pos.line.saturating_sub(1)) else { return self.source.len() };
        let line = &self.source[start..];
        let col = pos.col.saturating_sub(1);
        start + line.char_indices().nth(col).map_or(line.len(), |(b, _)| b)
    }

    fn line(&self, line: usize) -> &'a str {
        let Some(&start) = self.starts.get(line.saturating_sub(1)) else { return "" };
        let end = self.starts.get(line).map_or(self.source.len(), |e| e.saturating_sub(1));
        self.source[start..end.max(start)].trim_end_matches('\r')
    }

    /// The text from one position up to another, whitespace collapsed. Far along a line (a
    /// generated file) it is not worth the walk: `…`.
    fn between(&self, from: SourcePos, to: SourcePos) -> String {
        if from.col > MAX_COLUMN || to.col > MAX_COLUMN || to.line.saturating_sub(from.line) > 50 {
            return "…".into();
        }
        let (a, b) = (self.offset(from), self.offset(to));
        if a >= b {
            return String::new();
        }
        squash(&self.source[a..b])
    }
}

/// Whitespace runs (newlines included) become one space; long text is cut with `…`.
fn squash(text: &str) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    shorten(&joined, MAX_SHOWN)
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// What an open bracket is, for the rules that depend on where a token sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// `(`; `call` is the index of the callee's name token, `reported` once a keyword argument was.
    Paren {
        at: usize,
        call: Option<usize>,
        reported: bool,
    },
    /// `[`; `reported` once a comprehension was.
    Bracket {
        at: usize,
        reported: bool,
    },
    Brace,
    Map,
    /// `${` of a back-tick string: its `}` returns the tokenizer to text.
    Interpolation,
}

fn pos_of(p: rhai::Position) -> SourcePos {
    SourcePos::new(p.line().unwrap_or(1), p.position().unwrap_or(1))
}

fn tokens(engine: &Engine, source: &str) -> Vec<(Token, SourcePos)> {
    let inputs = [source];
    let (stream, control) = engine.lex(&inputs);
    let mut out = Vec::new();
    let mut interpolations: Vec<usize> = Vec::new();
    let mut depth = 0usize;
    for (token, pos) in stream {
        if out.len() >= MAX_TOKENS || token == Token::EOF {
            break;
        }
        match &token {
            Token::InterpolatedString(_) => interpolations.push(depth),
            Token::LeftBrace | Token::MapStart => depth += 1,
            Token::RightBrace => {
                depth = depth.saturating_sub(1);
                if interpolations.last() == Some(&depth) {
                    interpolations.pop();
                    control.borrow_mut().is_within_text = true;
                }
            }
            _ => {}
        }
        out.push((token, pos_of(pos)));
    }
    out
}

fn ident(token: &Token) -> Option<&str> {
    match token {
        Token::Identifier(name) => Some(name.as_str()),
        Token::Reserved(name) => Some(name.as_str()),
        _ => None,
    }
}

/// Byte ranges of `"""..."""` and `'''...'''` blocks, found on the text (the tokenizer splits them).
fn docstrings(source: &str) -> Vec<(usize, usize)> {
    let mut ranges = Vec::new();
    let mut from = 0;
    while ranges.len() < MAX_HABITS {
        let next = ["\"\"\"", "\'\'\'"]
            .iter()
            .filter_map(|q| source[from..].find(q).map(|i| (from + i, *q)))
            .min_by_key(|(i, _)| *i);
        let Some((start, quote)) = next else { break };
        let body = start + 3;
        let end = source[body..].find(quote).map_or(source.len(), |j| body + j + 3);
        ranges.push((start, end));
        from = end;
    }
    ranges
}

/// The Python forms in `source`, in file order, at most `MAX_HABITS`.
pub fn scan(engine: &Engine, source: &str, declared: &[String]) -> Vec<Habit> {
    let lines = Lines::new(source);
    let toks = tokens(engine, source);
    let docs = docstrings(source);
    // Positions, not offsets: an offset costs a walk along its line, and a line can be megabytes.
    let to_pos = |off: usize| {
        let line = lines.starts.partition_point(|&s| s <= off);
        let start = lines.starts.get(line.saturating_sub(1)).copied().unwrap_or(0);
        SourcePos::new(line, source.get(start..off).map_or(1, |t| t.chars().count() + 1))
    };
    let doc_spans: Vec<(SourcePos, SourcePos)> = docs.iter().map(|(a, b)| (to_pos(*a), to_pos(*b))).collect();
    let in_doc = |p: SourcePos| doc_spans.iter().any(|(a, b)| p >= *a && p < *b);
    let is_declared = |name: &str| declared.iter().any(|d| d == name);
    let mut habits: Vec<Habit> = Vec::new();
    for (start, _) in &docs {
        let line = source[..*start].matches('\n').count() + 1;
        let col = source[..*start].rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let quote = &source[*start..*start + 3];
        habits.push(
            Habit::new(SourcePos::new(line, col), format!("`{quote}` docstrings are Python: write a `//` comment"))
                .help(
                    "to document a DAG or task, give it `doc_md: \"...\"` (a Rhai string may span lines in back-ticks)",
                ),
        );
    }
    let mut stack: Vec<Open> = Vec::new();
    let mut comment_line = 0usize;
    let mut statement_start = true;
    for i in 0..toks.len() {
        let (token, pos) = (&toks[i].0, toks[i].1);
        let prev = i.checked_sub(1).map(|j| &toks[j]);
        let next = toks.get(i + 1);
        let first_on_line = prev.is_none_or(|(_, p)| p.line < pos.line);
        let at_statement_start = statement_start || (first_on_line && stack.iter().all(|o| *o == Open::Brace));
        statement_start = false;
        if pos.line == comment_line || in_doc(pos) {
            continue;
        }
        let found = match token {
            Token::Reserved(s) if s.starts_with('#') && !(s.as_str() == "#!" && pos == SourcePos::new(1, 1)) => {
                comment_line = pos.line;
                Some(Habit::new(pos, "`#` starts a comment in Python: Rhai comments start with `//`"))
            }
            Token::Reserved(s) if s.as_str() == "@" => {
                Some(Habit::new(pos, "decorators such as `@task` and `@dag` are Python").help(
                    "declare a DAG with `let dag = DAG(\"id\", #{ ... });` and tasks with operators; a Rhai closure \
                     runs as a task with `RhaiOperator(#{ task_id: \"t\", callable: |ctx| { ... } })`",
                ))
            }
            Token::LexError(e) if matches!(&**e, LexError::ImproperSymbol(sym, _) if sym == "(*") => {
                let name = next.and_then(|(t, _)| ident(t)).unwrap_or("tasks");
                let callee = prev.and_then(|(t, _)| ident(t)).unwrap_or("");
                Some(Habit::new(pos, format!("`*{name}` unpacking is Python: pass the array itself: `{callee}({name})`")).help(
                    "`chain(tasks)` and `cross_downstream(a, b)` take arrays; `a >> tasks` joins `a` to each of them",
                ))
            }
            Token::LexError(e) => lex_habit(e, pos, &lines),
            Token::Import if matches!(next, Some((Token::Identifier(_), _))) => {
                comment_line = pos.line;
                Some(import_habit(pos, lines.line(pos.line)))
            }
            Token::Identifier(_) | Token::Reserved(_) => {
                let name = ident(token).unwrap_or_default();
                identifier_habit(&Ctx { toks: &toks, i, lines: &lines, stack: &stack, at_statement_start }, name)
                    .filter(|_| !is_declared(name))
                    .inspect(|h| {
                        if h.message.contains("import") {
                            comment_line = pos.line;
                        }
                    })
            }
            Token::LeftBrace if expression_position(prev) => dict_habit(&toks, i, &lines),
            Token::Multiply | Token::PowerOf
                if matches!(prev, Some((Token::LeftParen | Token::Comma, _)))
                    && matches!(next, Some((Token::Identifier(_) | Token::LeftBracket, _))) =>
            {
                let name = next.and_then(|(t, _)| ident(t)).unwrap_or("tasks");
                Some(Habit::new(pos, format!("`*{name}` unpacking is Python: pass the array itself: `{name}`")).help(
                    "`chain(tasks)` and `cross_downstream(a, b)` take arrays; `a >> tasks` joins `a` to each of them",
                ))
            }
            Token::For => match stack.last_mut() {
                Some(Open::Bracket { at, reported }) if !*reported => {
                    *reported = true;
                    let at = *at;
                    Some(comprehension_habit(&toks, at, i, &lines))
                }
                _ => None,
            },
            Token::Colon if next.is_none_or(|(_, p)| p.line > pos.line) => block_colon_habit(&toks, i, &lines),
            _ => None,
        };
        let opens_paren =
            matches!(token, Token::LexError(e) if matches!(&**e, LexError::ImproperSymbol(sym, _) if sym == "(*"));
        match token {
            _ if opens_paren => {
                let call = prev.filter(|(t, _)| matches!(t, Token::Identifier(_))).map(|_| i - 1);
                stack.push(Open::Paren { at: i, call, reported: false });
            }
            Token::LeftParen => {
                let call = prev.filter(|(t, _)| matches!(t, Token::Identifier(_))).map(|_| i - 1);
                stack.push(Open::Paren { at: i, call, reported: false });
            }
            Token::LeftBracket => stack.push(Open::Bracket { at: i, reported: false }),
            Token::LeftBrace => {
                stack.push(if matches!(prev, Some((Token::InterpolatedString(_), _))) {
                    Open::Interpolation
                } else {
                    Open::Brace
                });
                statement_start = true;
            }
            Token::MapStart => stack.push(Open::Map),
            Token::RightParen | Token::RightBracket | Token::RightBrace => {
                stack.pop();
                statement_start = matches!(token, Token::RightBrace);
            }
            Token::SemiColon => statement_start = true,
            Token::Equals => {
                if let Some(Open::Paren { reported, .. }) = stack.last_mut()
                    && matches!(prev, Some((Token::Identifier(_), _)))
                    && i >= 2
                    && matches!(toks[i - 2].0, Token::LeftParen | Token::Comma)
                    && !*reported
                {
                    *reported = true;
                }
            }
            _ => {}
        }
        if let Some(h) = found
            && !habits.iter().any(|o| o.pos == h.pos)
        {
            habits.push(h);
            if habits.len() >= MAX_HABITS {
                break;
            }
        }
    }
    habits.sort_by_key(|h| h.pos);
    habits
}

/// What the identifier rules look at.
struct Ctx<'a, 'b> {
    toks: &'a [(Token, SourcePos)],
    i: usize,
    lines: &'a Lines<'b>,
    stack: &'a [Open],
    at_statement_start: bool,
}

fn identifier_habit(c: &Ctx, name: &str) -> Option<Habit> {
    let (toks, i) = (c.toks, c.i);
    let pos = toks[i].1;
    let prev = i.checked_sub(1).map(|j| &toks[j].0);
    let next = toks.get(i + 1).map(|t| &t.0);
    let after_dot = matches!(prev, Some(Token::Period));
    if after_dot {
        return None;
    }
    // A keyword argument: `f(name=value)`.
    if next == Some(&Token::Equals)
        && matches!(prev, Some(Token::LeftParen | Token::Comma))
        && let Some(Open::Paren { at, call, reported: false }) = c.stack.last()
    {
        return Some(kwargs_habit(c, *at, *call));
    }
    if next == Some(&Token::Equals)
        && matches!(prev, Some(Token::MapStart | Token::Comma))
        && c.stack.last() == Some(&Open::Map)
    {
        return Some(Habit::new(pos, format!("`{name} = ...` in a map: Rhai writes `{name}: ...`")));
    }
    let python = |rhai: &str| Some(Habit::new(pos, format!("`{name}` is Python: in Rhai write `{rhai}`")));
    match name {
        "True" => return python("true"),
        "False" => return python("false"),
        "None" => {
            return Some(
                Habit::new(pos, "`None` is Python: Rhai's empty value is `()`")
                    .help("leave the key out to take its default; `schedule: ()` means no schedule"),
            );
        }
        "and" => return python("&&"),
        "or" => return python("||"),
        "not" if next == Some(&Token::In) => return python("!in"),
        "not" => return python("!"),
        "elif" => return python("else if"),
        "pass" => return Some(Habit::new(pos, "`pass` is Python: an empty Rhai block is `{}`")),
        "def" if matches!(next, Some(Token::Identifier(_))) => {
            let fname = next.and_then(ident).unwrap_or("f");
            let params = toks
                .iter()
                .skip(i + 3)
                .take_while(|(t, _)| *t != Token::RightParen)
                .filter_map(|(t, _)| ident(t))
                .collect::<Vec<_>>()
                .join(", ");
            return Some(
                Habit::new(pos, format!("`def {fname}(...):` is Python: write `fn {fname}({params}) {{ ... }}`")).help(
                    "a Rhai function's body is in braces, its statements end with `;`, and its last value is returned",
                ),
            );
        }
        "lambda" => {
            let colon = toks.iter().skip(i + 1).position(|(t, _)| *t == Token::Colon).map(|k| i + 1 + k);
            let params = colon.map_or(String::new(), |c2| c.lines.between(toks[i + 1].1, toks[c2].1));
            let body = colon.map_or(String::from("..."), |c2| expression_text(toks, c2 + 1, c.lines));
            return Some(Habit::new(pos, format!("`lambda` is Python: a Rhai closure is written `|{params}| {body}`")));
        }
        "with" => {
            let callee = next.and_then(ident).unwrap_or("DAG");
            let target = toks
                .iter()
                .skip(i + 1)
                .position(|(t, _)| *t == Token::As)
                .and_then(|k| toks.get(i + 2 + k))
                .and_then(|(t, _)| ident(t))
                .unwrap_or("dag");
            let help = if callee == "TaskGroup" {
                format!(
                    "a task joins the group with `task_group: {target}` in its arguments; drop the indented block's `:`"
                )
            } else {
                "operators declared after it join the last DAG declared (or pass `dag: dag`); drop the indented block's `:`"
                    .to_string()
            };
            return Some(
                Habit::new(
                    pos,
                    format!("`with {callee}(...) as {target}:` is Python: write `let {target} = {callee}(...);`"),
                )
                .help(help),
            );
        }
        "from" if c.at_statement_start && toks[i..].iter().any(|(t, p)| *t == Token::Import && p.line == pos.line) => {
            return Some(import_habit(pos, c.lines.line(pos.line)));
        }
        "f" if matches!(next, Some(Token::StringConstant(_)))
            && toks.get(i + 1).is_some_and(|(_, p)| p.line == pos.line && p.col == pos.col + 1) =>
        {
            let text = match next {
                Some(Token::StringConstant(s)) => s.replace('{', "${"),
                _ => String::new(),
            };
            return Some(Habit::new(
                pos,
                format!("f-strings are Python: Rhai interpolates in back-ticks: `` `{}` ``", shorten(&text, 60)),
            ));
        }
        _ => {}
    }
    let module_call = matches!(name, "datetime" | "timedelta");
    // Names no one declares in Rhai are Airflow's wherever they stand; common words (`str`, `os`)
    // only when called or dotted.
    let airflow_only = name.starts_with("__")
        || matches!(name, "Variable" | "XCom" | "TriggerRule" | "pendulum" | "airflow" | "Dataset" | "Param");
    if let Some(advice) = airflow_name(name)
        && (airflow_only || matches!(next, Some(Token::Period)) || (!module_call && next == Some(&Token::LeftParen)))
    {
        let message = if name == "TriggerRule" {
            let rule = toks.get(i + 2).and_then(|(t, _)| ident(t)).map(str::to_lowercase);
            match rule {
                Some(rule) => format!("`TriggerRule.{}` is Python: write `\"{rule}\"`", rule.to_uppercase()),
                None => advice.message,
            }
        } else {
            advice.message
        };
        return Some(Habit::new(pos, message).help(advice.help));
    }
    // An assignment without `let`: Python declares by assigning.
    if c.at_statement_start && next == Some(&Token::Equals) {
        return Some(
            Habit::new(
                pos,
                format!("`{name} = ...` assigns a variable that was never declared: write `let {name} = ...;`"),
            )
            .help("Rhai declares variables with `let` and ends statements with `;`"),
        );
    }
    None
}

fn import_habit(pos: SourcePos, line: &str) -> Habit {
    let line = line.trim();
    let shown = if line.chars().count() <= 60 { line.to_string() } else { "import ...".to_string() };
    Habit::new(pos, format!("`{shown}` is Python: rhaiflow's DAG API is built in; delete this line"))
        .help("`DAG`, the operators, `days_ago`, `datetime`, `timedelta` and `chain` need no import; stdlib modules are imported as `import \"alerts\" as alerts;`")
}

/// `name(a=1, b=2)` → `name(#{ a: 1, b: 2 })`, positional arguments kept in front.
fn kwargs_habit(c: &Ctx, open: usize, call: Option<usize>) -> Habit {
    let toks = c.toks;
    let name = call.and_then(|k| ident(&toks[k].0)).unwrap_or("f").to_string();
    let mut depth = 0i32;
    let mut close = None;
    let mut keys = Vec::new();
    for (k, (t, _)) in toks.iter().enumerate().skip(open + 1) {
        match t {
            Token::LeftParen | Token::LeftBracket | Token::LeftBrace | Token::MapStart => depth += 1,
            Token::RightParen | Token::RightBracket | Token::RightBrace if depth == 0 => {
                close = Some(k);
                break;
            }
            Token::RightParen | Token::RightBracket | Token::RightBrace => depth -= 1,
            Token::Equals if depth == 0 && matches!(toks[k - 1].0, Token::Identifier(_)) => keys.push(k),
            _ => {}
        }
    }
    let pos = toks[c.i].1;
    let first_key = toks[c.i].1;
    let quotable = |k: usize| toks[k].1.col <= MAX_COLUMN && toks[k].1.line.saturating_sub(toks[open].1.line) <= 50;
    let rewritten = match close {
        Some(close) if keys.len() <= 20 && quotable(open) && quotable(close) => {
            let src = c.lines.source;
            let (a, b) = (c.lines.offset(toks[open].1) + 1, c.lines.offset(toks[close].1));
            let key_start = c.lines.offset(first_key);
            let mut text = String::new();
            let mut last = a;
            for &k in &keys {
                let eq = c.lines.offset(toks[k].1);
                if eq < a || eq > b {
                    continue;
                }
                text.push_str(&src[last..eq]);
                text.push(':');
                last = eq + 1;
            }
            text.push_str(&src[last..b]);
            let split = key_start.saturating_sub(a).min(text.len());
            let (positional, named) = text.split_at(split);
            let named = named.split_whitespace().collect::<Vec<_>>().join(" ");
            let named = named.trim_end_matches(',').trim();
            let named = named.replace(" :", ":");
            let named = fix_colons(&named);
            let positional = positional.split_whitespace().collect::<Vec<_>>().join(" ");
            let positional = if positional.is_empty() { positional } else { format!("{positional} ") };
            let full = format!("{name}({positional}#{{ {named} }})");
            if full.chars().count() <= MAX_SHOWN { full } else { key_outline(&name, &positional, toks, &keys) }
        }
        _ => key_outline(&name, "", toks, &keys),
    };
    let first = ident(&toks[c.i].0).unwrap_or("key");
    Habit::new(pos, format!("keyword arguments such as `{first}=` are Python: write `{rewritten}`"))
        .help("rhaiflow takes keyword arguments as one map: `#{ key: value, ... }`")
}

/// A call too long to quote whole, as its keys: `DAG("x", #{ schedule: ..., tags: ..., ... })`.
fn key_outline(name: &str, positional: &str, toks: &[(Token, SourcePos)], keys: &[usize]) -> String {
    let mut entries = String::new();
    for &k in keys {
        let Some(key) = k.checked_sub(1).and_then(|j| ident(&toks[j].0)) else { continue };
        let entry = format!("{key}: ..., ");
        if name.len() + positional.len() + entries.len() + entry.len() > MAX_SHOWN {
            entries.push_str("... ");
            return format!("{name}({positional}#{{ {entries}}})");
        }
        entries.push_str(&entry);
    }
    let entries = entries.trim_end_matches(", ");
    if entries.is_empty() {
        format!("{name}({positional}#{{ ... }})")
    } else {
        format!("{name}({positional}#{{ {entries} }})")
    }
}

/// `a:1` → `a: 1` after turning `=` into `:`.
fn fix_colons(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        out.push(ch);
        if ch == ':' && chars.peek().is_some_and(|n| !n.is_whitespace()) {
            out.push(' ');
        }
    }
    out
}

/// The text of one expression starting at token `from`: up to a `,`, `;` or closing bracket at its depth.
fn expression_text(toks: &[(Token, SourcePos)], from: usize, lines: &Lines) -> String {
    let Some(&(_, start)) = toks.get(from) else { return "...".into() };
    let mut depth = 0i32;
    let mut end = None;
    for (t, p) in toks.iter().skip(from) {
        match t {
            Token::LeftParen | Token::LeftBracket | Token::LeftBrace | Token::MapStart => depth += 1,
            Token::RightParen | Token::RightBracket | Token::RightBrace if depth == 0 => {
                end = Some(*p);
                break;
            }
            Token::RightParen | Token::RightBracket | Token::RightBrace => depth -= 1,
            Token::Comma | Token::SemiColon if depth == 0 => {
                end = Some(*p);
                break;
            }
            _ if depth == 0 && p.line > start.line => {
                end = Some(*p);
                break;
            }
            _ => {}
        }
    }
    match end {
        Some(end) if end.line == start.line => lines.between(start, end),
        _ => squash(
            lines
                .line(start.line)
                .get(lines.offset(start) - lines.offset(SourcePos::new(start.line, 1))..)
                .unwrap_or("..."),
        ),
    }
}

/// `{` where a value is expected, followed by `"key":` or `key:` (or `}`): a Python dict.
fn dict_habit(toks: &[(Token, SourcePos)], i: usize, lines: &Lines) -> Option<Habit> {
    let pos = toks[i].1;
    let next = toks.get(i + 1).map(|t| &t.0);
    let after = toks.get(i + 2).map(|t| &t.0);
    let shown = match (next, after) {
        (Some(Token::RightBrace), _) => "#{}".to_string(),
        (Some(Token::StringConstant(_) | Token::Identifier(_)), Some(Token::Colon)) => {
            let first = expression_text(toks, i + 1, lines);
            format!("#{{ {first}, ... }}")
        }
        _ => return None,
    };
    Some(
        Habit::new(pos, format!("a Python dict `{{...}}`: Rhai writes a map with `#{{`: `{shown}`"))
            .help("a bare `{ ... }` is a block of statements in Rhai; keys may be names or strings: `#{ retries: 1 }`"),
    )
}

fn expression_position(prev: Option<&(Token, SourcePos)>) -> bool {
    matches!(
        prev.map(|p| &p.0),
        Some(Token::LeftParen | Token::Comma | Token::Colon | Token::Equals | Token::LeftBracket | Token::Return)
    )
}

/// `[expr for x in xs]` → a loop that pushes.
fn comprehension_habit(toks: &[(Token, SourcePos)], open: usize, for_at: usize, lines: &Lines) -> Habit {
    let pos = toks[for_at].1;
    let expr = lines.between(toks[open + 1].1, pos);
    let var = toks.get(for_at + 1).and_then(|(t, _)| ident(t)).unwrap_or("x");
    let in_at = toks.iter().skip(for_at).position(|(t, _)| *t == Token::In).map(|k| for_at + k);
    let iter = in_at.map_or(String::from("xs"), |k| expression_text(toks, k + 1, lines));
    let iter = iter.split(" if ").next().unwrap_or("xs").to_string();
    let target = match open.checked_sub(2).map(|k| (&toks[k].0, &toks[k + 1].0)) {
        Some((Token::Identifier(n), Token::Equals)) => n.to_string(),
        _ => "items".to_string(),
    };
    let expr = shorten(&expr, 40);
    Habit::new(pos, "list comprehensions are Python: build the array with a `for` loop".to_string())
        .help(format!("write `let {target} = []; for {var} in {iter} {{ {target}.push({expr}); }}`"))
}

/// A line that ends with `:` after `if`/`for`/`while`/`else`/`try`: a Python block.
fn block_colon_habit(toks: &[(Token, SourcePos)], i: usize, lines: &Lines) -> Option<Habit> {
    let pos = toks[i].1;
    let first = toks[..i].iter().rev().take_while(|(_, p)| p.line == pos.line).last()?;
    let keyword = match &first.0 {
        Token::If => "if",
        Token::For => "for",
        Token::While => "while",
        Token::Else => "else",
        Token::Try => "try",
        Token::Identifier(s) if s.as_str() == "elif" || s.as_str() == "except" => return None,
        _ => return None,
    };
    let head = lines.between(first.1, pos);
    Some(
        Habit::new(pos, format!("`{head}:` opens a Python block: Rhai uses braces: `{head} {{ ... }}`"))
            .help(format!("indentation means nothing in Rhai; put the `{keyword}` body between `{{` and `}}`")),
    )
}

fn lex_habit(e: &LexError, pos: SourcePos, lines: &Lines) -> Option<Habit> {
    match e {
        LexError::MalformedChar(text) => {
            let text = text.replace('"', "\\\"");
            Some(
                Habit::new(
                    pos,
                    format!(
                        "single quotes make one character in Rhai, not a string: write `\"{}\"`",
                        shorten(&text, 60)
                    ),
                )
                .help("Rhai strings are in double quotes, or back-ticks for `${interpolation}`"),
            )
        }
        _ if lines.source.get(lines.offset(pos)..).is_some_and(|rest| rest.starts_with('#')) => {
            Some(Habit::new(pos, "`#` starts a comment in Python: Rhai comments start with `//`"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn habits(src: &str) -> Vec<String> {
        scan(&Engine::new(), src, &[])
            .into_iter()
            .map(|h| format!("{}:{} {}", h.pos.line, h.pos.col, h.message))
            .collect()
    }

    #[test]
    fn finds_keyword_arguments_and_rewrites_the_call() {
        let found = habits("let d = timedelta(minutes=5);");
        assert_eq!(
            found,
            vec!["1:19 keyword arguments such as `minutes=` are Python: write `timedelta(#{ minutes: 5 })`"]
        );
    }

    #[test]
    fn interpolated_strings_are_not_python() {
        assert!(habits("let x = `a${1 + 2}b`; let y = #{ a: 1 };").is_empty());
    }

    #[test]
    fn a_comment_hides_the_rest_of_its_line() {
        assert_eq!(habits("# if True: x = None\nlet a = 1;").len(), 1);
    }
}

#[cfg(test)]
mod valid_rhai {
    use super::*;

    /// Rhai that an Airflow user's habits resemble must not be reported when the file fails for
    /// another reason.
    #[test]
    fn rhai_forms_are_not_python_habits() {
        let src = "fn bump(n, m) {\n    n = n + m;\n    n\n}\nlet x = if true { 1 } else { 2 };\n\
                   let t = { let a = 1; a };\nlet m = #{ retries: 1, \"quoted key\": 2 };\n\
                   for i in 0..3 { x = i; }\nlet s = `a${x}b`;\nlet c = 'c';\nlet f = |a| a + 1;\n\
                   import \"alerts\" as alerts;\nlet y = x == 1;\n// True, None, def, lambda in a comment\n";
        let declared = super::super::error::declared_names(src);
        let found: Vec<String> = scan(&Engine::new(), src, &declared).into_iter().map(|h| h.message).collect();
        assert!(found.is_empty(), "{found:?}");
    }
}
