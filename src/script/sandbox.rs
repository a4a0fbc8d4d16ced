//! Natives of Rhai's standard packages that a DAG file must not reach as they are: the ones that
//! block (`sleep`) or that build a value far larger than the size limits before Rhai measures it
//! (`replace`). Functions registered on the engine are found before the packages', so these
//! overrides also catch dynamic calls such as `Fn("sleep").call(1)` and `call("sleep", 1)`.

use super::error::ScriptError;
use rhai::{Engine, EvalAltResult, FLOAT, INT, ImmutableString, NativeCallContext, Position};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

fn no_sleep() -> RhaiResult<()> {
    Err(ScriptError::new("`sleep` is not available in DAG files").with_help(
        "a DAG file only declares DAGs and is evaluated on every parse; to wait, use a sensor or a task's `retry_delay`",
    )
    .into())
}

/// The length `text.replace(find, with)` would have, without building it.
fn replaced_len(text: &str, find: &str, with: &str) -> usize {
    let count = if find.is_empty() { text.chars().count() + 1 } else { text.matches(find).count() };
    text.len().saturating_sub(count.saturating_mul(find.len())).saturating_add(count.saturating_mul(with.len()))
}

/// Replaces after checking the result against the string size limit.
fn checked_replace(ctx: &NativeCallContext, text: &mut ImmutableString, find: &str, with: &str) -> RhaiResult<()> {
    if text.is_empty() {
        return Ok(());
    }
    let max = ctx.engine().max_string_size();
    if max > 0 && replaced_len(text, find, with) > max {
        return Err(EvalAltResult::ErrorDataTooLarge("Length of string".into(), Position::NONE).into());
    }
    *text = text.replace(find, with).into();
    Ok(())
}

/// Registers the overrides.
pub fn register(engine: &mut Engine) {
    engine.register_fn("sleep", |_: INT| no_sleep());
    engine.register_fn("sleep", |_: FLOAT| no_sleep());
    engine.register_fn("replace", |ctx: NativeCallContext, text: &mut ImmutableString, find: &str, with: &str| {
        checked_replace(&ctx, text, find, with)
    });
    engine.register_fn("replace", |ctx: NativeCallContext, text: &mut ImmutableString, find: char, with: &str| {
        checked_replace(&ctx, text, &find.to_string(), with)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaced_length_is_predicted() {
        for (text, find, with) in [("banana", "a", "xyz"), ("banana", "", "-"), ("aaa", "aa", ""), ("abc", "z", "q")] {
            assert_eq!(replaced_len(text, find, with), text.replace(find, with).len(), "{text} {find} {with}");
        }
    }
}
