//! `--format` and `--filter` as docker's: a small evaluator for the Go-template forms people
//! use with docker (`{{.Repository}}:{{.Tag}}`, `{{.Config.Env}}`, `{{json .}}`,
//! `{{upper .Name}}`, a leading `table` for aligned columns with headers) over rows given as
//! JSON objects, and `KEY=VALUE` filters with glob patterns. Pure text handling; calls
//! nothing else in strata except `util::print_table`.

use super::Error;
use serde_json::Value;

/// A parsed `--format` template.
#[derive(Debug, Clone)]
pub struct Template {
    table: bool,
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Action {
        func: Option<Func>,
        path: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Func {
    Json,
    Upper,
    Lower,
    Title,
    Len,
}

fn bad(template: &str, why: impl std::fmt::Display) -> Error {
    Error::Usage(format!("--format {template:?}: {why}"))
}

impl Template {
    /// Parse `s`; `table` as the first word asks for a header line and aligned columns, `\t`
    /// (also written as the two characters backslash-t) separates columns.
    pub fn parse(s: &str) -> Result<Template, Error> {
        let (table, body) = match s.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with([' ', '\t']) => {
                (true, rest.trim_start_matches([' ']))
            }
            _ => (false, s),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| bad(s, "unclosed action (missing \"}}\")"))?;
            let action = after[..end].trim().trim_matches('-').trim();
            parts.push(parse_action(s, action)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { table, parts })
    }

    /// The template applied to one row.
    pub fn render(&self, row: &Value) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Action { func, path } => {
                    let v = lookup(row, path);
                    out.push_str(&apply(*func, v));
                }
            }
        }
        out
    }

    /// Header cells for `table`: each action's field name through `headers` (docker's
    /// column titles), else upper-cased.
    fn header(&self, headers: &[(&str, &str)]) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Action { path, .. } => {
                    let name = path.last().map(String::as_str).unwrap_or("");
                    match headers.iter().find(|(k, _)| *k == name) {
                        Some((_, h)) => out.push_str(h),
                        None => out.push_str(&name.to_uppercase()),
                    }
                }
            }
        }
        out
    }

    /// Print `rows`: one rendered line each; with `table`, a header first and the
    /// tab-separated cells aligned as columns.
    pub fn print(&self, rows: &[Value], headers: &[(&str, &str)]) {
        if !self.table {
            for r in rows {
                println!("{}", self.render(r));
            }
            return;
        }
        let header = self.header(headers);
        let head: Vec<&str> = header.split('\t').collect();
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| self.render(r).split('\t').map(str::to_string).collect())
            .collect();
        super::util::print_table(&head, &cells);
    }
}

fn parse_action(template: &str, action: &str) -> Result<Part, Error> {
    let words: Vec<&str> = action.split_whitespace().collect();
    let (func, arg) = match words[..] {
        [arg] => (None, arg),
        [f, arg] => {
            let func = match f {
                "json" => Func::Json,
                "upper" => Func::Upper,
                "lower" => Func::Lower,
                "title" => Func::Title,
                "len" => Func::Len,
                _ => return Err(bad(template, format!("function {f:?} not supported"))),
            };
            (Some(func), arg)
        }
        _ => {
            return Err(bad(
                template,
                format!("{{{{{action}}}}} not supported (fields, json, upper, lower, title, len)"),
            ))
        }
    };
    if !arg.starts_with('.') {
        return Err(bad(
            template,
            format!("{arg:?}: expected a field such as .ID"),
        ));
    }
    let path = arg[1..]
        .split('.')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    Ok(Part::Action { func, path })
}

/// `.A.B` in `row`; a missing field is `null` (Go prints `<no value>`).
fn lookup<'a>(row: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = row;
    for k in path {
        v = v.get(k)?;
    }
    Some(v)
}

fn apply(func: Option<Func>, v: Option<&Value>) -> String {
    match func {
        Some(Func::Json) => v.map(|v| v.to_string()).unwrap_or_else(|| "null".into()),
        Some(Func::Len) => match v {
            Some(Value::Array(a)) => a.len().to_string(),
            Some(Value::Object(o)) => o.len().to_string(),
            Some(Value::String(s)) => s.len().to_string(),
            _ => "0".into(),
        },
        Some(Func::Upper) => go_text(v).to_uppercase(),
        Some(Func::Lower) => go_text(v).to_lowercase(),
        Some(Func::Title) => {
            let t = go_text(v);
            let mut c = t.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect(),
                None => t,
            }
        }
        None => go_text(v),
    }
}

/// A value as Go's text/template prints it: strings bare, slices `[a b]`, maps `map[k:v]`.
fn go_text(v: Option<&Value>) -> String {
    match v {
        None => "<no value>".into(),
        Some(Value::Null) => "<nil>".into(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => format!(
            "[{}]",
            a.iter()
                .map(|x| go_text(Some(x)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Some(Value::Object(o)) => format!(
            "map[{}]",
            o.iter()
                .map(|(k, x)| format!("{k}:{}", go_text(Some(x))))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Some(v) => v.to_string(),
    }
}

/// `--filter KEY=VALUE` arguments, checked against the keys a command knows.
#[derive(Debug, Default, Clone)]
pub struct Filters(Vec<(String, String)>);

impl Filters {
    pub fn parse(args: &[String], known: &[&str]) -> Result<Filters, Error> {
        let mut v = Vec::new();
        for a in args {
            let (k, val) = a.split_once('=').ok_or_else(|| {
                Error::Usage(format!("bad format of filter {a:?} (expected name=value)"))
            })?;
            let k = k.trim().to_lowercase();
            if !known.contains(&k.as_str()) {
                return Err(Error::Usage(format!(
                    "invalid filter '{k}' (known here: {})",
                    known.join(", ")
                )));
            }
            v.push((k, val.trim().to_string()));
        }
        Ok(Filters(v))
    }

    /// Values given for `key`.
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when no value was given for `key`, or `pred` holds for one of them (docker:
    /// values of one key are alternatives, different keys must all match).
    pub fn any_or_none(&self, key: &str, mut pred: impl FnMut(&str) -> bool) -> bool {
        let mut given = false;
        for v in self.values(key) {
            given = true;
            if pred(v) {
                return true;
            }
        }
        !given
    }

    /// `dangling=true|false`: None when not given.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, Error> {
        match self.values(key).last() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(Error::Usage(format!(
                "invalid filter '{key}={v}': expected true or false"
            ))),
        }
    }
}

/// Go's `path.Match` for the patterns docker's `reference=` filter takes: `*` (not across
/// `/`), `?`, and literal characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn m(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len())
                .take_while(|&i| i == 0 || t[i - 1] != '/')
                .any(|i| m(rest, &t[i..])),
            Some(('?', rest)) => t.first().is_some_and(|c| *c != '/') && m(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && m(rest, &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    m(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_functions_and_go_printing() {
        let row = json!({"Repository": "busybox", "Tag": "1.36", "ID": "abc",
                         "Config": {"Env": ["A=1", "B=2"]}});
        let t = Template::parse("{{.Repository}}:{{.Tag}}").unwrap();
        assert_eq!(t.render(&row), "busybox:1.36");
        let t = Template::parse("{{ .Config.Env }} {{json .Config}} {{upper .Tag}}").unwrap();
        assert_eq!(t.render(&row), r#"[A=1 B=2] {"Env":["A=1","B=2"]} 1.36"#);
        let t = Template::parse("{{.Nope}}").unwrap();
        assert_eq!(t.render(&row), "<no value>");
        assert!(Template::parse("{{.ID").is_err());
        assert!(Template::parse("{{range .X}}").is_err());
        assert!(Template::parse("{{printf \"%s\" .X}}").is_err());
        let t = Template::parse("table {{.ID}}\\t{{.Repository}}").unwrap();
        assert!(t.table);
        assert_eq!(t.header(&[("ID", "IMAGE ID")]), "IMAGE ID\tREPOSITORY");
    }

    #[test]
    fn filters_and_globs() {
        let f = Filters::parse(
            &["dangling=true".into(), "reference=bus*".into()],
            &["dangling", "reference"],
        )
        .unwrap();
        assert_eq!(f.bool("dangling").unwrap(), Some(true));
        assert!(f.any_or_none("reference", |p| glob(p, "busybox")));
        assert!(!f.any_or_none("reference", |p| glob(p, "alpine")));
        assert!(f.any_or_none("status", |_| false));
        assert!(Filters::parse(&["color=red".into()], &["dangling"]).is_err());
        assert!(Filters::parse(&["dangling".into()], &["dangling"]).is_err());
        assert!(glob("library/*", "library/busybox"));
        assert!(!glob("*", "library/busybox"));
        assert!(glob("b?sybox:*", "busybox:1.36"));
    }
}
