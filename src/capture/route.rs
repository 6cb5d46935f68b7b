//! Which DS stream each row message goes to. Pure: a template in, a stream name out.
//!
//! ```text
//!  --route items=items-stream      ──parse_route_option──▶ ("items", Template)
//!  Router { default: pg-{table}, per table: [...] }
//!     validate(TableInfo)            on every Relation message: placeholders exist
//!     stream_for(TableInfo, RowMessage) ──▶ "pg-items", "sessions/42", ...
//! ```
//!
//! A template is literal text with placeholders: `{table}`, `{schema}`, and `{column}` for
//! any column of the table, e.g. `pg-{table}` (one stream per table) or
//! `sessions/{session_id}` (one stream per value, fanning rows out). There are no brace
//! escapes: a brace is never a valid stream-name character. `table` and `schema` always mean
//! the relation's names, even when a column has that name. A table's route is the entry named like its message `type` (`name` in
//! schema `public`, `schema.name` otherwise) or by `schema.name`; else the default.
//!
//! Stream names: [`STREAM_NAME_DOC`]. A name is the stream as the server knows it, not yet
//! URL-encoded: the DS client encodes each `/`-separated segment once, exactly as
//! `encodeURIComponent` does (see `ds::url`), so a client that substitutes a value and
//! encodes it finds the same stream. Servers either decode the path (`durable-streams-server`:
//! `%2F` becomes `/`) or key streams by the raw path (the Node server and the upstream Rust
//! one); both agree with that rule for every value except those that cannot stand for
//! themselves in a path: a value with `/` would add a segment (and, decoded, collide with a
//! real one), `.` and `..` are dot segments URL parsers remove, the empty string makes an empty
//! segment, and NULL has no text. Those are escaped, `%` first so that escapes cannot collide
//! with values; a placeholder's values therefore map to distinct texts, and with one
//! placeholder per segment, rows with different values never share a stream by accident.

use serde_json::Value;

use super::message::{Operation, RowMessage, TableInfo};

#[cfg(test)]
mod tests;

/// How placeholder values and templates make a stream name, for docs and `--help`.
pub const STREAM_NAME_DOC: &str = "\
A placeholder is replaced by the value's text as it is (strings as they are, numbers and \
booleans as JSON text such as 42 or true, JSON documents as compact JSON), so a client finds \
a per-key stream by substituting the value and URL-encoding it once, with \
encodeURIComponent: a b@c.com is served at /v1/stream/sessions/a%20b%40c.com. Four kinds of \
value cannot stand for themselves in a URL path and are escaped, so that no two values share \
a stream: % becomes %25 and / becomes %2F (a/b is the name sessions/a%2Fb, at \
/v1/stream/sessions/a%252Fb), the values . and .. become %2E and %2E%2E, SQL NULL becomes \
_null_ and the empty string _empty_, and values that are literally _null_ or _empty_ get their \
first _ encoded (%5Fnull_). A template's literal text may use A-Z a-z 0-9 - . _ ~, '/', and \
! $ & ' ( ) * + , ; = : @. A stream name must be non-empty, must not start or end with '/', \
and must not contain an empty, '.' or '..' segment.";

/// What NULL renders as.
const NULL_VALUE: &str = "_null_";
/// What the empty string renders as.
const EMPTY_VALUE: &str = "_empty_";

/// Why a template, a route option or a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("template {template:?}: unbalanced {brace} at byte {position}")]
    UnbalancedBrace {
        template: String,
        brace: char,
        position: usize,
    },

    #[error("template {template:?}: empty placeholder at byte {position}")]
    EmptyPlaceholder { template: String, position: usize },

    #[error(
        "template {template:?}: character {character:?} is not allowed in a stream name. \
         Use letters, digits, '/', and - . _ ~ ! $ & ' ( ) * + , ; = : @."
    )]
    InvalidCharacter { template: String, character: char },

    #[error("stream name {name:?} {reason}")]
    InvalidStreamName { name: String, reason: &'static str },

    #[error(
        "template {template:?} for table {table} names column {column:?}, which the table does \
         not have"
    )]
    UnknownColumn {
        table: String,
        column: String,
        template: String,
    },

    #[error(
        "route for table {table} needs column {column:?}, which the {operation} did not carry. \
         Set REPLICA IDENTITY FULL on the table, or route by key columns only."
    )]
    ColumnUnavailable {
        table: String,
        column: String,
        operation: Operation,
    },

    #[error("route option {option:?}: {reason}. Write it as TABLE=TEMPLATE, e.g. items=pg-items.")]
    InvalidRouteOption {
        option: String,
        reason: &'static str,
    },

    #[error("table {table} has more than one route")]
    DuplicateRoute { table: String },
}

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Table,
    Schema,
    Column(String),
}

/// A parsed stream-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `source`, then checks the stream names it can make: it is rendered with a
    /// plain value in every placeholder, which catches a leading `/`, `//`, `..` segments and
    /// an empty template before any row arrives.
    pub fn parse(source: &str) -> Result<Template, RouteError> {
        let template = Template {
            source: source.to_owned(),
            parts: parse_parts(source)?,
        };
        check_stream_name(&template.render(|_| Ok("x".to_owned()))?)?;
        Ok(template)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The column placeholders, in order of appearance.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Column(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Concatenates the parts; `value` supplies each placeholder's already-encoded text.
    fn render(
        &self,
        mut value: impl FnMut(&Part) -> Result<String, RouteError>,
    ) -> Result<String, RouteError> {
        let mut name = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => name.push_str(text),
                placeholder => name.push_str(&value(placeholder)?),
            }
        }
        Ok(name)
    }
}

/// Splits a template into literals and placeholders, checking braces and literal characters.
fn parse_parts(source: &str) -> Result<Vec<Part>, RouteError> {
    let unbalanced = |brace, position| RouteError::UnbalancedBrace {
        template: source.to_owned(),
        brace,
        position,
    };
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = source.char_indices().peekable();
    while let Some((position, c)) = chars.next() {
        match c {
            '}' => return Err(unbalanced('}', position)),
            '{' => {
                let start = position + 1;
                let end = source[start..]
                    .find(['{', '}'])
                    .map(|offset| start + offset)
                    .filter(|&end| source.as_bytes()[end] == b'}')
                    .ok_or_else(|| unbalanced('{', position))?;
                let name = &source[start..end];
                if name.is_empty() {
                    let template = source.to_owned();
                    return Err(RouteError::EmptyPlaceholder { template, position });
                }
                while chars.next_if(|&(i, _)| i <= end).is_some() {}
                parts.push(Part::Literal(std::mem::take(&mut literal)));
                parts.push(match name {
                    "table" => Part::Table,
                    "schema" => Part::Schema,
                    column => Part::Column(column.to_owned()),
                });
            }
            c if is_unreserved(c) || c == '/' || "!$&'()*+,;=:@".contains(c) => literal.push(c),
            character => {
                let template = source.to_owned();
                return Err(RouteError::InvalidCharacter {
                    template,
                    character,
                });
            }
        }
    }
    parts.push(Part::Literal(literal));
    parts.retain(|part| !matches!(part, Part::Literal(text) if text.is_empty()));
    Ok(parts)
}

/// Routes tables to templates: one default, overridden per table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    default: Template,
    per_table: Vec<(String, Template)>,
}

impl Router {
    /// Default of `--stream-template`: the sync-layer document's `pg-items` for table
    /// `items`.
    pub const DEFAULT_TEMPLATE: &'static str = "pg-{table}";

    /// `per_table` names tables as `name` (schema `public`) or `schema.name`. Naming a table
    /// twice, also as both `items` and `public.items`, is refused: which route wins would
    /// otherwise depend on option order.
    pub fn new(
        default: Template,
        per_table: Vec<(String, Template)>,
    ) -> Result<Router, RouteError> {
        let mut seen: Vec<&str> = Vec::new();
        for (table, _) in &per_table {
            let table = table.strip_prefix("public.").unwrap_or(table);
            if seen.contains(&table) {
                let table = table.to_owned();
                return Err(RouteError::DuplicateRoute { table });
            }
            seen.push(table);
        }
        Ok(Router { default, per_table })
    }

    /// The template rows of `table` are routed by. Called for every row, so the
    /// `schema.name` form is matched in place rather than built.
    pub fn template_for(&self, table: &TableInfo) -> &Template {
        let relation = &table.relation;
        let is_qualified = |name: &str| {
            name.strip_prefix(relation.namespace.as_str())
                .and_then(|rest| rest.strip_prefix('.'))
                == Some(relation.name.as_str())
        };
        self.per_table
            .iter()
            .find(|(name, _)| *name == table.type_name || is_qualified(name))
            .map_or(&self.default, |(_, template)| template)
    }

    /// Checks that every column the table's template names exists. Call it on every
    /// Relation message: a schema change can drop a column a route depends on.
    pub fn validate(&self, table: &TableInfo) -> Result<(), RouteError> {
        let template = self.template_for(table);
        let columns = &table.relation.columns;
        match template
            .columns()
            .find(|name| !columns.iter().any(|c| c.name == *name))
        {
            Some(column) => Err(RouteError::UnknownColumn {
                table: table.qualified_name(),
                column: column.to_owned(),
                template: template.as_str().to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// The stream `row` goes to, rendered from its table's template and `row.columns()`.
    pub fn stream_for(&self, table: &TableInfo, row: &RowMessage) -> Result<String, RouteError> {
        self.render(table, row.operation, |column| row.columns().get(column))
    }

    /// The stream every row of `table` goes to when its template names no column, so that
    /// the stream does not depend on the row (the default, `{schema}.{table}` and fixed
    /// names); `None` when it names one. Capture then writes the rows without building
    /// them as trees first.
    pub fn fixed_stream(&self, table: &TableInfo) -> Option<Result<String, RouteError>> {
        if self.template_for(table).columns().next().is_some() {
            return None;
        }
        Some(self.render(table, Operation::Insert, |_| None))
    }

    fn render<'v>(
        &self,
        table: &TableInfo,
        operation: Operation,
        value_of: impl Fn(&str) -> Option<&'v Value>,
    ) -> Result<String, RouteError> {
        let relation = &table.relation;
        let name = self.template_for(table).render(|part| match part {
            Part::Table => Ok(encode_text(&relation.name)),
            Part::Schema => Ok(encode_text(&relation.namespace)),
            Part::Column(column) => match value_of(column) {
                Some(value) => Ok(encode_value(value)),
                None => Err(RouteError::ColumnUnavailable {
                    table: table.qualified_name(),
                    column: column.clone(),
                    operation,
                }),
            },
            Part::Literal(text) => Ok(text.clone()),
        })?;
        check_stream_name(&name)?;
        Ok(name)
    }
}

/// Parses the CLI's `--route TABLE=TEMPLATE`; the first `=` separates the two.
pub fn parse_route_option(option: &str) -> Result<(String, Template), RouteError> {
    let invalid = |reason| RouteError::InvalidRouteOption {
        option: option.to_owned(),
        reason,
    };
    let (table, template) = option.split_once('=').ok_or_else(|| invalid("no '='"))?;
    if table.is_empty() {
        return Err(invalid("no table name before '='"));
    }
    if table.starts_with('.') || table.ends_with('.') || table.contains(char::is_whitespace) {
        return Err(invalid("the table must be written as name or schema.name"));
    }
    Ok((table.to_owned(), Template::parse(template)?))
}

/// Fails unless `name` can be used as a stream name, per [`STREAM_NAME_DOC`].
fn check_stream_name(name: &str) -> Result<(), RouteError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.starts_with('/') || name.ends_with('/') {
        Some("must not start or end with '/'")
    } else if name
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        Some("must not contain an empty, '.' or '..' segment")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(RouteError::InvalidStreamName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A column value as placeholder text, per [`STREAM_NAME_DOC`].
fn encode_value(value: &Value) -> String {
    match value {
        Value::Null => NULL_VALUE.to_owned(),
        Value::String(text) => encode_text(text),
        other => encode_text(&other.to_string()),
    }
}

/// A value's text for one place in a stream name: itself, except the escapes of
/// [`STREAM_NAME_DOC`]. Distinct texts stay distinct (`%` is escaped first, so every `%` in
/// the result starts an escape), none of them contains `/` or is `.` or `..`, and none can be
/// confused with NULL.
fn encode_text(text: &str) -> String {
    match text {
        "" => EMPTY_VALUE.to_owned(),
        NULL_VALUE | EMPTY_VALUE => format!("%5F{}", &text[1..]),
        "." => "%2E".to_owned(),
        ".." => "%2E%2E".to_owned(),
        _ => text.replace('%', "%25").replace('/', "%2F"),
    }
}

/// RFC 3986 unreserved characters: safe anywhere in a URL path.
fn is_unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}
