//! A problem found in a DAG file, pointing at the line and column, rendered like a compiler error.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A 1-based line and column in a DAG file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct SourcePos {
    pub line: usize,
    pub col: usize,
}

impl SourcePos {
    pub fn new(line: usize, col: usize) -> Self {
        SourcePos { line, col }
    }
}

/// One error in one file. `pos` is `None` when the problem belongs to the file as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file, relative to the dags folder where possible.
    pub file: String,
    pub pos: Option<SourcePos>,
    pub message: String,
    /// The source line at `pos`, for the caret display.
    pub source_line: Option<String>,
    /// A hint on what to do, printed under the caret.
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(file: impl Into<String>, pos: Option<SourcePos>, message: impl Into<String>) -> Self {
        Diagnostic { file: file.into(), pos, message: message.into(), source_line: None, help: None }
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Fills `source_line` from the file's text.
    pub fn with_source(mut self, source: &str) -> Self {
        if let Some(pos) = self.pos {
            self.source_line = source.lines().nth(pos.line.saturating_sub(1)).map(str::to_owned);
        }
        self
    }

    /// `file:line:col`, or just `file`.
    pub fn location(&self) -> String {
        match self.pos {
            Some(p) => format!("{}:{}:{}", self.file, p.line, p.col),
            None => self.file.clone(),
        }
    }
}

impl fmt::Display for Diagnostic {
    /// ```text
    /// error: unknown key `retires` in `BashOperator` — did you mean `retries`?
    ///   --> dags/etl.rhai:4:47
    ///    |
    ///  4 | let t = BashOperator(#{ task_id: "t", retires: 2 });
    ///    |                                       ^
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        write!(f, "  --> {}", self.location())?;
        if let (Some(pos), Some(line)) = (self.pos, &self.source_line) {
            let number = pos.line.to_string();
            let pad = " ".repeat(number.len());
            let line = line.replace('\t', " ");
            let caret_at: usize = line.chars().take(pos.col.saturating_sub(1)).count();
            write!(f, "\n{pad} |\n{number} | {line}\n{pad} | {}^", " ".repeat(caret_at))?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n  = help: {help}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_caret_under_the_column() {
        let d = Diagnostic::new("a.rhai", Some(SourcePos::new(2, 5)), "bad thing")
            .with_source("first\nlet x = 1;\n")
            .with_help("do this");
        assert_eq!(
            d.to_string(),
            "error: bad thing\n  --> a.rhai:2:5\n  |\n2 | let x = 1;\n  |     ^\n  = help: do this"
        );
    }
}
