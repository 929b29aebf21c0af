//! Reading the `--config` TOML file: every key must be a long flag name of the server
//! (written with `-` or `_`), every value of the type the flag takes, and valid by the
//! flag's own parser. Errors name the file and line.

use clap::{Arg, ArgAction, Command};
use std::any::TypeId;
use std::collections::HashMap;
use std::path::Path;
use toml::de::{DeTable, DeValue};

/// One setting read from the file: the argument's id and its command-line form.
pub struct Setting {
    pub id: String,
    pub args: Vec<String>,
}

/// What kind of TOML value an argument takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A switch (`--trust-proxy`): true or false.
    Switch,
    /// A whole number.
    Integer,
    /// A list (repeatable flag): an array of strings.
    List,
    /// Anything else: a string.
    Text,
}

pub fn kind(arg: &Arg) -> Kind {
    match arg.get_action() {
        ArgAction::SetTrue | ArgAction::SetFalse => Kind::Switch,
        ArgAction::Append => Kind::List,
        _ => {
            let t = arg.get_value_parser().type_id();
            let integers = [
                TypeId::of::<u8>(),
                TypeId::of::<u16>(),
                TypeId::of::<u32>(),
                TypeId::of::<u64>(),
                TypeId::of::<usize>(),
                TypeId::of::<i8>(),
                TypeId::of::<i16>(),
                TypeId::of::<i32>(),
                TypeId::of::<i64>(),
                TypeId::of::<isize>(),
            ];
            if integers.iter().any(|i| t == *i) {
                Kind::Integer
            } else if t == TypeId::of::<bool>() {
                Kind::Switch
            } else {
                Kind::Text
            }
        }
    }
}

/// The arguments a file may set: every long flag of the server except `--config` itself
/// and help/version.
pub fn settable(cmd: &Command) -> impl Iterator<Item = &Arg> {
    cmd.get_arguments().filter(|a| {
        a.get_long().is_some()
            && !a.is_positional()
            && !matches!(a.get_id().as_str(), "config" | "help" | "version")
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn type_name(v: &DeValue<'_>) -> &'static str {
    match v {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "a number",
        DeValue::Float(_) => "a decimal number",
        DeValue::Boolean(_) => "true/false",
        DeValue::Datetime(_) => "a date",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn suggestion(name: &str, cmd: &Command) -> String {
    let best = settable(cmd)
        .filter_map(|a| a.get_long())
        .map(|l| (distance(name, l), l))
        .min();
    match best {
        Some((d, l)) if d <= (name.len() / 3).max(2) => format!(" (did you mean {l:?}?)"),
        _ => " (the keys are the long flag names listed by --help)".to_owned(),
    }
}

/// The command with the environment switched off, to check one value at a time.
fn checker() -> Command {
    use clap::CommandFactory;
    super::Cli::command().mut_args(|a| a.env(None::<&'static str>))
}

/// Checks one value with the flag's own parser: the same message as for a bad flag.
fn check_value(checker: &Command, long: &str, value: &str) -> Result<(), String> {
    let flag = format!("--{long}={value}");
    match checker
        .clone()
        .try_get_matches_from(["peer-stream-server", flag.as_str()])
    {
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation
            ) =>
        {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or_default();
            Err(first.trim_start_matches("error: ").to_owned())
        }
        // Other complaints (a flag that requires another) are for the whole command line.
        _ => Ok(()),
    }
}

/// Reads and checks the file; the settings in file order.
pub fn read(path: &Path, cmd: &Command) -> Result<Vec<Setting>, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{shown}: cannot read the configuration file: {e}"))?;
    let table = DeTable::parse(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        format!("{shown}:{line}: {}", e.message().trim_end())
    })?;
    let mut entries: Vec<_> = table.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    let checker = checker();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut settings = Vec::new();
    for (key, value) in entries {
        let line = line_of(&text, key.span().start);
        let at = |msg: String| format!("{shown}:{line}: {msg}");
        let written: &str = key.get_ref();
        let name = written.replace('_', "-");
        if name == "config" {
            return Err(at(
                "\"config\" cannot be set inside a configuration file".to_owned()
            ));
        }
        let Some(arg) = settable(cmd).find(|a| a.get_long() == Some(name.as_str())) else {
            return Err(at(format!(
                "unknown key {written:?}{}",
                suggestion(&name, cmd)
            )));
        };
        let long = name.as_str();
        if let Some(first) = seen.insert(long.to_owned(), line) {
            return Err(at(format!("{long:?} is set twice (also on line {first})")));
        }
        let value = value.get_ref();
        let wrong = |want: &str| at(format!("{long:?} takes {want}, not {}", type_name(value)));
        let args = match (kind(arg), value) {
            (Kind::Switch, DeValue::Boolean(on)) => match arg.get_action() {
                // A plain switch: present for its "on" value, absent otherwise.
                ArgAction::SetTrue if *on => vec![format!("--{long}")],
                ArgAction::SetFalse if !*on => vec![format!("--{long}")],
                ArgAction::SetTrue | ArgAction::SetFalse => Vec::new(),
                _ => vec![format!("--{long}={on}")],
            },
            (Kind::Switch, _) => return Err(wrong("true or false")),
            (Kind::Integer, DeValue::Integer(n)) => {
                let number = i128::from_str_radix(n.as_str(), n.radix())
                    .map_err(|_| at(format!("{long:?}: {:?} is out of range", n.as_str())))?;
                let number = number.to_string();
                check_value(&checker, long, &number).map_err(at)?;
                vec![format!("--{long}={number}")]
            }
            (Kind::Integer, _) => return Err(wrong("a whole number (without quotes)")),
            (Kind::List, DeValue::Array(items)) => {
                let mut args = Vec::new();
                for item in items.iter() {
                    let item_line = line_of(&text, item.span().start);
                    let Some(s) = item.get_ref().as_str() else {
                        return Err(format!(
                            "{shown}:{item_line}: {long:?} takes an array of strings; one item is {}",
                            type_name(item.get_ref())
                        ));
                    };
                    check_value(&checker, long, s)
                        .map_err(|m| format!("{shown}:{item_line}: {m}"))?;
                    args.push(format!("--{long}={s}"));
                }
                args
            }
            (Kind::List, _) => {
                return Err(wrong(&format!(
                    "an array of strings, e.g. {long} = [\"first\", \"second\"]"
                )))
            }
            (Kind::Text, DeValue::String(s)) => {
                check_value(&checker, long, s).map_err(at)?;
                vec![format!("--{long}={s}")]
            }
            (Kind::Text, _) => return Err(wrong("a string (in quotes)")),
        };
        settings.push(Setting {
            id: arg.get_id().as_str().to_owned(),
            args,
        });
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_and_lines() {
        assert_eq!(distance("outbox-capasity", "outbox-capacity"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
        let cmd = super::super::command();
        assert!(suggestion("outbox-capasity", &cmd).contains("outbox-capacity"));
        assert!(suggestion("zzzzzzzzzzzz", &cmd).contains("--help"));
    }

    #[test]
    fn kinds_follow_the_flags() {
        let cmd = super::super::command();
        let of = |long: &str| {
            settable(&cmd)
                .find(|a| a.get_long() == Some(long))
                .map(kind)
        };
        assert_eq!(of("trust-proxy"), Some(Kind::Switch));
        assert_eq!(of("outbox-capacity"), Some(Kind::Integer));
        assert_eq!(of("rate-per-sec"), Some(Kind::Integer));
        assert_eq!(of("stun"), Some(Kind::List));
        assert_eq!(of("allow-origin"), Some(Kind::List));
        assert_eq!(of("listen"), Some(Kind::Text));
        assert_eq!(of("turn-secret"), Some(Kind::Text));
        assert_eq!(of("config"), None);
    }
}
