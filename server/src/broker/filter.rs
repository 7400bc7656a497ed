//! Subscription filters: Pub/Sub's attribute filter language, parsed once
//! into a [`Filter`] and judged against each message's attributes.
//!
//! The grammar, over bytes; whitespace (space, tab, newline, carriage
//! return) may separate any two tokens:
//!
//! ```text
//! filter     = expression END
//! expression = unary { ("AND" | "OR") unary }   one kind of operator per level
//! unary      = ("NOT" | "-") unary | primary
//! primary    = "(" expression ")"
//!            | "attributes" "." name ("=" | "!=") string
//!            | "attributes" ":" name
//!            | "hasPrefix" "(" "attributes" "." name "," string ")"
//! name       = identifier | string
//! identifier = one or more of A-Z a-z 0-9 _ -
//! string     = '"' { any character but '"' and '\', or an escape } '"'
//! escape     = '\"' | '\\' | '\n' | '\t' | '\r'
//! ```
//!
//! `AND` and `OR` may not be mixed at one level without parentheses
//! (`a AND b OR c` is refused; write `(a AND b) OR c`), as in Pub/Sub: the
//! reader never has to remember which binds tighter. Keywords are
//! upper case. A comparison with `!=` is the negation of the one with `=`,
//! so it is true for a message without the attribute.

use std::fmt;

/// The longest filter a subscription takes, in bytes.
pub const MAX_FILTER_BYTES: usize = 1024;

/// How deep parentheses and `NOT`s may nest: deep enough for any filter a
/// person writes, shallow enough that parsing never exhausts the stack.
const MAX_DEPTH: usize = 64;

/// A parsed filter. Built by [`Filter::parse`], judged by
/// [`Filter::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `attributes.NAME = "VALUE"`.
    Equals {
        /// The attribute's name.
        name: String,
        /// The value it must have.
        value: String,
    },
    /// `attributes:NAME`: the attribute is present, whatever its value.
    Has {
        /// The attribute's name.
        name: String,
    },
    /// `hasPrefix(attributes.NAME, "PREFIX")`.
    HasPrefix {
        /// The attribute's name.
        name: String,
        /// The prefix its value must start with.
        prefix: String,
    },
    /// `NOT f`, `-f`, and `attributes.NAME != "VALUE"` (as `NOT` of `=`).
    Not(Box<Filter>),
    /// `f AND g AND …`: at least two terms.
    And(Vec<Filter>),
    /// `f OR g OR …`: at least two terms.
    Or(Vec<Filter>),
}

/// Why a filter does not parse: what was wrong, and the byte position in
/// the filter where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {position})")]
pub struct FilterError {
    /// Byte offset into the filter text; its length for an unexpected end.
    pub position: usize,
    /// What was expected or found there.
    pub message: String,
}

impl Filter {
    /// Parses a filter; the empty string (or only whitespace) is no filter.
    ///
    /// # Errors
    /// A [`FilterError`] naming the first byte where the text leaves the
    /// grammar, or a filter over [`MAX_FILTER_BYTES`].
    pub fn parse(text: &str) -> Result<Option<Filter>, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError {
                position: MAX_FILTER_BYTES,
                message: format!(
                    "the filter is {} bytes long; at most {MAX_FILTER_BYTES} are allowed",
                    text.len()
                ),
            });
        }
        let mut parser = Parser {
            text: text.as_bytes(),
            at: 0,
            depth: 0,
        };
        parser.skip_space();
        if parser.at == parser.text.len() {
            return Ok(None);
        }
        let filter = parser.expression()?;
        parser.skip_space();
        if parser.at < parser.text.len() {
            return Err(parser.error_here("expected AND, OR, or the end of the filter"));
        }
        Ok(Some(filter))
    }

    /// Whether a message with these attributes passes the filter.
    pub fn matches(&self, attributes: &[(String, String)]) -> bool {
        self.matches_by(&|name: &str| {
            attributes
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.as_str())
        })
    }

    /// Like [`Filter::matches`], with the attributes behind a look-up.
    pub fn matches_by<'a>(&self, lookup: &dyn Fn(&str) -> Option<&'a str>) -> bool {
        match self {
            Filter::Equals { name, value } => lookup(name) == Some(value.as_str()),
            Filter::Has { name } => lookup(name).is_some(),
            Filter::HasPrefix { name, prefix } => {
                lookup(name).is_some_and(|value| value.starts_with(prefix.as_str()))
            }
            Filter::Not(inner) => !inner.matches_by(lookup),
            Filter::And(terms) => terms.iter().all(|term| term.matches_by(lookup)),
            Filter::Or(terms) => terms.iter().any(|term| term.matches_by(lookup)),
        }
    }
}

/// Writes the filter back in the grammar above, parenthesising every
/// compound term, so that parsing the text gives the same filter.
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Filter::Equals { name, value } => {
                write!(f, "attributes.{} = {}", Name(name), Quoted(value))
            }
            Filter::Has { name } => write!(f, "attributes:{}", Name(name)),
            Filter::HasPrefix { name, prefix } => {
                write!(
                    f,
                    "hasPrefix(attributes.{}, {})",
                    Name(name),
                    Quoted(prefix)
                )
            }
            Filter::Not(inner) => write!(f, "NOT {}", Term(inner)),
            Filter::And(terms) => join(f, terms, " AND "),
            Filter::Or(terms) => join(f, terms, " OR "),
        }
    }
}

fn join(f: &mut fmt::Formatter<'_>, terms: &[Filter], operator: &str) -> fmt::Result {
    for (index, term) in terms.iter().enumerate() {
        if index > 0 {
            f.write_str(operator)?;
        }
        write!(f, "{}", Term(term))?;
    }
    Ok(())
}

/// A term inside a compound: parenthesised unless it is a single test.
struct Term<'a>(&'a Filter);

impl fmt::Display for Term<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Filter::And(_) | Filter::Or(_) | Filter::Not(_) => write!(f, "({})", self.0),
            single => write!(f, "{single}"),
        }
    }
}

/// An attribute name: bare when it is an identifier, quoted otherwise.
struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_empty() && self.0.bytes().all(is_identifier_byte) {
            f.write_str(self.0)
        } else {
            write!(f, "{}", Quoted(self.0))
        }
    }
}

/// A string literal with its escapes.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                other => write!(f, "{other}")?,
            }
        }
        f.write_str("\"")
    }
}

fn is_identifier_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// Which operator joins the terms of one level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Join {
    And,
    Or,
}

impl Join {
    fn word(self) -> &'static str {
        match self {
            Join::And => "AND",
            Join::Or => "OR",
        }
    }
}

/// A recursive-descent parser over the filter's bytes.
struct Parser<'a> {
    text: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn expression(&mut self) -> Result<Filter, FilterError> {
        let first = self.unary()?;
        let mut terms = vec![first];
        let mut join: Option<Join> = None;
        loop {
            self.skip_space();
            let start = self.at;
            let next = if self.keyword("AND") {
                Join::And
            } else if self.keyword("OR") {
                Join::Or
            } else {
                break;
            };
            match join {
                Some(kind) if kind != next => {
                    return Err(FilterError {
                        position: start,
                        message: format!(
                            "{} after {} needs parentheses: write (a {} b) {} c",
                            next.word(),
                            kind.word(),
                            kind.word(),
                            next.word()
                        ),
                    });
                }
                _ => join = Some(next),
            }
            terms.push(self.unary()?);
        }
        Ok(match join {
            None => terms.swap_remove(0),
            Some(Join::And) => Filter::And(terms),
            Some(Join::Or) => Filter::Or(terms),
        })
    }

    fn unary(&mut self) -> Result<Filter, FilterError> {
        self.skip_space();
        let start = self.at;
        let negated = if self.keyword("NOT") {
            true
        } else if self.peek() == Some(b'-') {
            self.at += 1;
            true
        } else {
            false
        };
        if negated {
            self.enter(start)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Filter::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Filter, FilterError> {
        self.skip_space();
        let start = self.at;
        if self.peek() == Some(b'(') {
            self.at += 1;
            self.enter(start)?;
            let inner = self.expression()?;
            self.skip_space();
            self.expect(b')', "expected ) to close the ( at byte", Some(start))?;
            self.depth -= 1;
            return Ok(inner);
        }
        if self.keyword("hasPrefix") {
            self.skip_space();
            self.expect(b'(', "expected ( after hasPrefix", None)?;
            self.skip_space();
            let name = self.attribute_dot()?;
            self.skip_space();
            self.expect(
                b',',
                "expected , between the attribute and the prefix",
                None,
            )?;
            self.skip_space();
            let prefix = self.string("a prefix in double quotes")?;
            self.skip_space();
            self.expect(b')', "expected ) to close hasPrefix(", None)?;
            return Ok(Filter::HasPrefix { name, prefix });
        }
        if !self.word_is("attributes") {
            return Err(self
                .error_here("expected attributes.NAME, attributes:NAME, hasPrefix(…), NOT or ("));
        }
        self.at += "attributes".len();
        match self.peek() {
            Some(b':') => {
                self.at += 1;
                let name = self.name()?;
                Ok(Filter::Has { name })
            }
            Some(b'.') => {
                self.at += 1;
                let name = self.name()?;
                self.skip_space();
                let negated = if self.text[self.at..].starts_with(b"!=") {
                    self.at += 2;
                    true
                } else if self.peek() == Some(b'=') {
                    self.at += 1;
                    false
                } else {
                    return Err(self.error_here("expected = or != after the attribute"));
                };
                self.skip_space();
                let value = self.string("a value in double quotes")?;
                let equals = Filter::Equals { name, value };
                Ok(if negated {
                    Filter::Not(Box::new(equals))
                } else {
                    equals
                })
            }
            _ => Err(self.error_here("expected . or : after attributes")),
        }
    }

    /// `attributes.NAME`, as inside `hasPrefix(…)`.
    fn attribute_dot(&mut self) -> Result<String, FilterError> {
        if !self.word_is("attributes") {
            return Err(self.error_here("expected attributes.NAME"));
        }
        self.at += "attributes".len();
        self.expect(b'.', "expected . after attributes", None)?;
        self.name()
    }

    fn name(&mut self) -> Result<String, FilterError> {
        if self.peek() == Some(b'"') {
            let name = self.string("an attribute name")?;
            if name.is_empty() {
                return Err(FilterError {
                    position: self.at - 2,
                    message: "an attribute name cannot be empty".to_string(),
                });
            }
            return Ok(name);
        }
        let start = self.at;
        while self.peek().is_some_and(is_identifier_byte) {
            self.at += 1;
        }
        if self.at == start {
            return Err(self.error_here(
                "expected an attribute name (letters, digits, _ and -, or a string in double quotes)",
            ));
        }
        Ok(String::from_utf8_lossy(&self.text[start..self.at]).into_owned())
    }

    /// A double-quoted string with its escapes resolved.
    fn string(&mut self, what: &str) -> Result<String, FilterError> {
        if self.peek() != Some(b'"') {
            return Err(self.error_here(&format!("expected {what}")));
        }
        let open = self.at;
        self.at += 1;
        let mut bytes = Vec::new();
        loop {
            match self.peek() {
                None => {
                    return Err(FilterError {
                        position: open,
                        message: "this string has no closing \"".to_string(),
                    });
                }
                Some(b'"') => {
                    self.at += 1;
                    break;
                }
                Some(b'\\') => {
                    let escape = self.at;
                    self.at += 1;
                    let resolved = match self.peek() {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'n') => b'\n',
                        Some(b't') => b'\t',
                        Some(b'r') => b'\r',
                        _ => {
                            return Err(FilterError {
                                position: escape,
                                message: "unknown escape: use \\\", \\\\, \\n, \\t or \\r"
                                    .to_string(),
                            });
                        }
                    };
                    bytes.push(resolved);
                    self.at += 1;
                }
                Some(byte) => {
                    bytes.push(byte);
                    self.at += 1;
                }
            }
        }
        // The input is a `&str` and escapes only replace ASCII with
        // ASCII, so the bytes between the quotes are still UTF-8.
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn enter(&mut self, at: usize) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError {
                position: at,
                message: format!("the filter nests deeper than {MAX_DEPTH} levels"),
            });
        }
        Ok(())
    }

    fn expect(
        &mut self,
        byte: u8,
        message: &str,
        opened: Option<usize>,
    ) -> Result<(), FilterError> {
        if self.peek() == Some(byte) {
            self.at += 1;
            return Ok(());
        }
        Err(match opened {
            Some(open) => self.error_here(&format!("{message} {open}")),
            None => self.error_here(message),
        })
    }

    /// Consumes `word` if it stands here as a whole word.
    fn keyword(&mut self, word: &str) -> bool {
        if self.word_is(word) {
            self.at += word.len();
            true
        } else {
            false
        }
    }

    /// Whether `word` stands here, not followed by an identifier byte.
    fn word_is(&self, word: &str) -> bool {
        let rest = &self.text[self.at..];
        rest.starts_with(word.as_bytes())
            && !rest
                .get(word.len())
                .is_some_and(|&next| is_identifier_byte(next))
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self
            .peek()
            .is_some_and(|byte| matches!(byte, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.at += 1;
        }
    }

    fn error_here(&self, message: &str) -> FilterError {
        let message = if self.at == self.text.len() {
            format!("{message}, found the end of the filter")
        } else {
            message.to_string()
        };
        FilterError {
            position: self.at,
            message,
        }
    }
}

#[cfg(test)]
mod tests;
