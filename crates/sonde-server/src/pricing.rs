//! The pricing table: USD per million tokens by model-name pattern and effective date,
//! used to compute a call's cost when the client sends none (a client-sent cost wins).
//!
//! A call's cost is the sum of uncached input tokens × the input price, cached input
//! tokens × the cached-input price, output tokens × the output price and reasoning
//! tokens × the reasoning price, prices being USD per million tokens.
//! Reasoning tokens are part of the output for the providers below, so their default
//! reasoning price is 0 (they are billed as output).
//!
//! Matching: among the entries whose pattern matches the model (`*` matches any run of
//! characters, the rest literally, case-insensitive) and whose `effective_ms` is at or
//! before the call, the longest pattern wins, then the latest date.

use sonde_types::TimestampMs;

/// One price entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Price {
    pub pattern: String,
    /// Milliseconds since the epoch from which this price applies.
    pub effective_ms: TimestampMs,
    pub input: f64,
    pub output: f64,
    pub cached_input: f64,
    pub reasoning: f64,
}

/// The shipped defaults (list prices, USD per million tokens). Override them with a
/// pricing table of your own.
pub fn defaults() -> Vec<Price> {
    let p = |pattern: &str, input: f64, output: f64, cached: f64| Price {
        pattern: pattern.to_string(),
        effective_ms: 0,
        input,
        output,
        cached_input: cached,
        reasoning: 0.0,
    };
    vec![
        p("gpt-4o*", 2.5, 10.0, 1.25),
        p("gpt-4o-mini*", 0.15, 0.6, 0.075),
        p("gpt-4.1*", 2.0, 8.0, 0.5),
        p("gpt-4.1-mini*", 0.4, 1.6, 0.1),
        p("o3*", 2.0, 8.0, 0.5),
        p("o4-mini*", 1.1, 4.4, 0.275),
        p("claude-sonnet-4*", 3.0, 15.0, 0.3),
        p("claude-3-5-sonnet*", 3.0, 15.0, 0.3),
        p("claude-opus-4*", 15.0, 75.0, 1.5),
        p("claude-haiku-3.5*", 0.8, 4.0, 0.08),
        p("claude-3-5-haiku*", 0.8, 4.0, 0.08),
        p("gemini-2.0-flash*", 0.1, 0.4, 0.025),
        p("gemini-1.5-pro*", 1.25, 5.0, 0.3125),
        p("gemini-2.5-pro*", 1.25, 10.0, 0.31),
        p("llama-3.1-70b*", 0.88, 0.88, 0.88),
        p("llama-3.1-8b*", 0.18, 0.18, 0.18),
    ]
}

fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let mut rest = t.as_str();
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// The price for `model` at `time_ms`, if any entry matches.
pub fn lookup<'a>(table: &'a [Price], model: &str, time_ms: TimestampMs) -> Option<&'a Price> {
    table
        .iter()
        .filter(|p| p.effective_ms <= time_ms && glob_match(&p.pattern, model))
        .max_by_key(|p| (p.pattern.len(), p.effective_ms))
}

/// The cost of a call in USD, rounded to 1e-9.
pub fn cost(p: &Price, input: i64, output: i64, cached: i64, reasoning: i64) -> f64 {
    let m = 1e-6;
    let uncached = (input - cached).max(0) as f64;
    let c = uncached * p.input * m
        + cached.max(0) as f64 * p.cached_input * m
        + output.max(0) as f64 * p.output * m
        + reasoning.max(0) as f64 * p.reasoning * m;
    (c * 1e9).round() / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_pattern_and_latest_date_win() {
        let mut t = defaults();
        let mini = lookup(&t, "gpt-4o-mini-2024-07-18", 0).unwrap();
        assert_eq!(mini.pattern, "gpt-4o-mini*");
        assert_eq!(
            lookup(&t, "GPT-4o-2024-08-06", 0).unwrap().pattern,
            "gpt-4o*"
        );
        assert!(lookup(&t, "unknown-model", 0).is_none());
        t.push(Price {
            effective_ms: 1000,
            input: 1.0,
            ..t[0].clone()
        });
        assert_eq!(lookup(&t, "gpt-4o", 999).unwrap().input, 2.5);
        assert_eq!(lookup(&t, "gpt-4o", 1000).unwrap().input, 1.0);
    }

    #[test]
    fn cost_counts_cached_tokens_at_their_price() {
        let p = &defaults()[0]; // gpt-4o: 2.5 in, 10 out, 1.25 cached
        // 1000 input of which 400 cached, 500 output
        let c = cost(p, 1000, 500, 400, 0);
        assert!((c - (600.0 * 2.5 + 400.0 * 1.25 + 500.0 * 10.0) / 1e6).abs() < 1e-12);
    }
}
