//! The SOQL the simulator understands: what crmsync and common third-party clients (simple-salesforce,
//! Singer tap-salesforce, Airbyte) send, parsed strictly; anything else is `MALFORMED_QUERY`.
//!
//! `SELECT field, … | COUNT() [, (order-items subquery)] FROM Object [WHERE condition]
//! [ORDER BY field [ASC|DESC] [NULLS FIRST|LAST], …] [LIMIT n] [OFFSET n]`, where a condition combines
//! `field op literal`, `field [NOT] IN (literal, …)` and `field LIKE 'text%'` with AND, OR, NOT and
//! parentheses; literals are 'strings' (backslash escapes), numbers, true/false, null, dates
//! (`2024-01-02`) and datetimes (`2024-01-02T03:04:05Z`, `…+01:00`, `….000+0000`).
//! Reference: developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select.htm

use std::cmp::Ordering;

use serde_json::Value;

use super::{object_name, wire};
use crate::canonical::Timestamp;

/// A parsed query.
#[derive(Debug)]
pub(super) struct Soql {
    pub(super) object: &'static str,
    /// Selected fields, in order (empty for `COUNT()`).
    pub(super) fields: Vec<String>,
    /// `SELECT COUNT()`.
    pub(super) count: bool,
    /// Whether the order-items subquery was selected.
    pub(super) items: bool,
    pub(super) condition: Option<Condition>,
    pub(super) order: Vec<(String, bool)>,
    pub(super) limit: Option<usize>,
    pub(super) offset: usize,
}

/// A WHERE clause.
#[derive(Debug)]
pub(super) enum Condition {
    And(Box<Condition>, Box<Condition>),
    Or(Box<Condition>, Box<Condition>),
    Not(Box<Condition>),
    Compare(String, Op, Literal),
    In(String, Vec<Literal>, bool),
    Like(String, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
    Null,
    Date(jiff::civil::Date),
    DateTime(i64),
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Symbol(&'static str),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&character) = chars.peek() {
        if character.is_whitespace() {
            chars.next();
            continue;
        }
        if character == '\'' {
            chars.next();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('\\') => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some('t') => value.push('\t'),
                        Some(escaped) => value.push(escaped),
                        None => return Err("unterminated string literal".into()),
                    },
                    Some('\'') => break,
                    Some(other) => value.push(other),
                    None => return Err("unterminated string literal".into()),
                }
            }
            tokens.push(Token::Text(value));
            continue;
        }
        let symbol = match character {
            ',' => Some(","),
            '(' => Some("("),
            ')' => Some(")"),
            '=' => Some("="),
            _ => None,
        };
        if let Some(symbol) = symbol {
            chars.next();
            tokens.push(Token::Symbol(symbol));
            continue;
        }
        if matches!(character, '<' | '>' | '!') {
            chars.next();
            let symbol = match (character, chars.peek()) {
                ('<', Some('=')) => "<=",
                ('>', Some('=')) => ">=",
                ('!', Some('=')) => "!=",
                ('<', Some('>')) => "<>",
                ('<', _) => "<",
                ('>', _) => ">",
                _ => return Err("unexpected token: '!'".into()),
            };
            if symbol.len() == 2 {
                chars.next();
            }
            tokens.push(Token::Symbol(symbol));
            continue;
        }
        let mut word = String::new();
        while let Some(&next) = chars.peek() {
            if next.is_alphanumeric() || matches!(next, '_' | '.' | ':' | '-' | '+') {
                word.push(next);
                chars.next();
            } else {
                break;
            }
        }
        if word.is_empty() {
            return Err(format!("unexpected token: '{character}'"));
        }
        tokens.push(Token::Word(word));
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        match self.peek() {
            Some(Token::Word(word)) if word.eq_ignore_ascii_case(keyword) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    fn expect_keyword(&mut self, keyword: &str) -> Result<(), String> {
        if self.keyword(keyword) { Ok(()) } else { Err(format!("unexpected token: expected {keyword}")) }
    }

    fn symbol(&mut self, symbol: &str) -> bool {
        if self.peek() == Some(&Token::Symbol(leak(symbol))) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Word(word)) => Ok(word),
            other => Err(format!("unexpected token: {other:?}")),
        }
    }

    fn condition(&mut self) -> Result<Condition, String> {
        let mut left = self.conjunction()?;
        while self.keyword("OR") {
            left = Condition::Or(Box::new(left), Box::new(self.conjunction()?));
        }
        Ok(left)
    }

    fn conjunction(&mut self) -> Result<Condition, String> {
        let mut left = self.factor()?;
        while self.keyword("AND") {
            left = Condition::And(Box::new(left), Box::new(self.factor()?));
        }
        Ok(left)
    }

    fn factor(&mut self) -> Result<Condition, String> {
        if self.keyword("NOT") {
            return Ok(Condition::Not(Box::new(self.factor()?)));
        }
        if self.symbol("(") {
            let inner = self.condition()?;
            if !self.symbol(")") {
                return Err("unexpected token: expected ')'".into());
            }
            return Ok(inner);
        }
        let field = self.word()?;
        if self.keyword("IN") {
            return Ok(Condition::In(field, self.list()?, false));
        }
        if self.keyword("NOT") {
            self.expect_keyword("IN")?;
            return Ok(Condition::In(field, self.list()?, true));
        }
        if self.keyword("LIKE") {
            return match self.next() {
                Some(Token::Text(pattern)) => Ok(Condition::Like(field, pattern)),
                other => Err(format!("unexpected token after LIKE: {other:?}")),
            };
        }
        let op = match self.next() {
            Some(Token::Symbol("=")) => Op::Eq,
            Some(Token::Symbol("!=" | "<>")) => Op::Ne,
            Some(Token::Symbol("<")) => Op::Lt,
            Some(Token::Symbol("<=")) => Op::Le,
            Some(Token::Symbol(">")) => Op::Gt,
            Some(Token::Symbol(">=")) => Op::Ge,
            other => return Err(format!("unexpected token: {other:?}")),
        };
        Ok(Condition::Compare(field, op, self.literal()?))
    }

    fn list(&mut self) -> Result<Vec<Literal>, String> {
        if !self.symbol("(") {
            return Err("unexpected token: expected '('".into());
        }
        let mut values = vec![self.literal()?];
        while self.symbol(",") {
            values.push(self.literal()?);
        }
        if !self.symbol(")") {
            return Err("unexpected token: expected ')'".into());
        }
        Ok(values)
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.next() {
            Some(Token::Text(text)) => Ok(Literal::Text(text)),
            Some(Token::Word(word)) => literal(&word),
            other => Err(format!("unexpected token: {other:?}")),
        }
    }
}

/// Maps the symbols the tokenizer produces to their static strings.
fn leak(symbol: &str) -> &'static str {
    match symbol {
        "," => ",",
        "(" => "(",
        ")" => ")",
        _ => "=",
    }
}

fn literal(word: &str) -> Result<Literal, String> {
    if word.eq_ignore_ascii_case("null") {
        return Ok(Literal::Null);
    }
    if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
        return Ok(Literal::Bool(word.eq_ignore_ascii_case("true")));
    }
    if word.contains('T') && word.starts_with(|character: char| character.is_ascii_digit()) {
        return word
            .parse::<Timestamp>()
            .map(|stamp| Literal::DateTime(stamp.unix_millis()))
            .map_err(|error| format!("invalid datetime literal {word}: {error}"));
    }
    if let Ok(date) = word.parse::<jiff::civil::Date>() {
        return Ok(Literal::Date(date));
    }
    word.parse::<f64>().map(Literal::Number).map_err(|_| format!("unexpected token: {word}"))
}

/// Parses a query (`MALFORMED_QUERY` text on error).
pub(super) fn parse_soql(soql: &str) -> Result<Soql, String> {
    let items = soql.contains(wire::ORDER_ITEMS_SUBQUERY);
    let without_items = soql.replace(&format!(", {}", wire::ORDER_ITEMS_SUBQUERY), "");
    let mut parser = Parser { tokens: tokenize(&without_items)?, at: 0 };
    parser.expect_keyword("SELECT")?;
    let mut fields = Vec::new();
    let mut count = false;
    loop {
        let field = parser.word()?;
        if field.eq_ignore_ascii_case("COUNT") {
            if !(parser.symbol("(") && parser.symbol(")")) {
                return Err("unexpected token: only COUNT() is supported".into());
            }
            count = true;
        } else if field.eq_ignore_ascii_case("FROM") {
            return Err("unexpected token: FROM".into());
        } else {
            fields.push(field);
        }
        if !parser.symbol(",") {
            break;
        }
    }
    if parser.peek() == Some(&Token::Symbol("(")) {
        return Err("unexpected token: '('".into());
    }
    parser.expect_keyword("FROM")?;
    let object_word = parser.word()?;
    let object = object_name(&object_word).ok_or_else(|| format!("sObject type '{object_word}' is not supported."))?;
    let condition = if parser.keyword("WHERE") { Some(parser.condition()?) } else { None };
    let mut order = Vec::new();
    if parser.keyword("ORDER") {
        parser.expect_keyword("BY")?;
        loop {
            let field = parser.word()?;
            let descending = if parser.keyword("DESC") {
                true
            } else {
                parser.keyword("ASC");
                false
            };
            if parser.keyword("NULLS") && !(parser.keyword("FIRST") || parser.keyword("LAST")) {
                return Err("unexpected token: expected FIRST or LAST".into());
            }
            order.push((field, descending));
            if !parser.symbol(",") {
                break;
            }
        }
    }
    let mut limit = None;
    let mut offset = 0;
    if parser.keyword("LIMIT") {
        limit = Some(parser.word()?.parse::<usize>().map_err(|_| "LIMIT expects a number".to_owned())?);
    }
    if parser.keyword("OFFSET") {
        offset = parser.word()?.parse::<usize>().map_err(|_| "OFFSET expects a number".to_owned())?;
    }
    if let Some(extra) = parser.peek() {
        return Err(format!("unexpected token: {extra:?}"));
    }
    if fields.is_empty() && !count {
        return Err("unexpected token: expected a field list".into());
    }
    Ok(Soql { object, fields, count, items, condition, order, limit, offset })
}

impl Soql {
    /// Every field the query reads (selected, filtered or sorted on), for the INVALID_FIELD check.
    pub(super) fn referenced_fields(&self) -> Vec<&str> {
        let mut fields: Vec<&str> = self.fields.iter().map(String::as_str).collect();
        fields.extend(self.order.iter().map(|(field, _)| field.as_str()));
        if let Some(condition) = &self.condition {
            condition.fields(&mut fields);
        }
        fields
    }
}

impl Condition {
    fn fields<'a>(&'a self, into: &mut Vec<&'a str>) {
        match self {
            Self::And(left, right) | Self::Or(left, right) => {
                left.fields(into);
                right.fields(into);
            }
            Self::Not(inner) => inner.fields(into),
            Self::Compare(field, _, _) | Self::In(field, _, _) | Self::Like(field, _) => into.push(field),
        }
    }

    /// Evaluates the condition on a row (`value` reads a field as the API would render it).
    pub(super) fn matches(&self, value: &dyn Fn(&str) -> Value) -> bool {
        match self {
            Self::And(left, right) => left.matches(value) && right.matches(value),
            Self::Or(left, right) => left.matches(value) || right.matches(value),
            Self::Not(inner) => !inner.matches(value),
            Self::Compare(field, op, literal) => {
                let ordering = compare(&value(field), literal);
                match op {
                    Op::Eq => ordering == Some(Ordering::Equal),
                    Op::Ne => ordering != Some(Ordering::Equal),
                    Op::Lt => ordering == Some(Ordering::Less),
                    Op::Le => matches!(ordering, Some(Ordering::Less | Ordering::Equal)),
                    Op::Gt => ordering == Some(Ordering::Greater),
                    Op::Ge => matches!(ordering, Some(Ordering::Greater | Ordering::Equal)),
                }
            }
            Self::In(field, literals, negated) => {
                let current = value(field);
                let found = literals.iter().any(|literal| compare(&current, literal) == Some(Ordering::Equal));
                found != *negated
            }
            Self::Like(field, pattern) => value(field).as_str().is_some_and(|text| like(text, pattern)),
        }
    }
}

/// Compares a rendered field value with a literal (`None`: not comparable, e.g. null vs a value).
pub(super) fn compare(value: &Value, literal: &Literal) -> Option<Ordering> {
    match (value, literal) {
        (Value::Null, Literal::Null) => Some(Ordering::Equal),
        (Value::Null, _) | (_, Literal::Null) => None,
        (Value::Bool(left), Literal::Bool(right)) => Some(left.cmp(right)),
        (Value::Number(left), Literal::Number(right)) => left.as_f64()?.partial_cmp(right),
        (Value::String(text), Literal::DateTime(right)) => {
            Some(text.parse::<Timestamp>().ok()?.unix_millis().cmp(right))
        }
        (Value::String(text), Literal::Date(right)) => Some(text.parse::<jiff::civil::Date>().ok()?.cmp(right)),
        (Value::String(text), Literal::Text(right)) => Some(text.as_str().cmp(right.as_str())),
        (Value::String(text), Literal::Number(right)) => text.parse::<f64>().ok()?.partial_cmp(right),
        _ => None,
    }
}

/// Orders two rendered values for ORDER BY (nulls first, as Salesforce sorts ascending).
pub(super) fn order_values(left: &Value, right: &Value) -> Ordering {
    match (left, right) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        (Value::Number(left), Value::Number(right)) => left
            .as_f64()
            .zip(right.as_f64())
            .and_then(|(left, right)| left.partial_cmp(&right))
            .unwrap_or(Ordering::Equal),
        (Value::String(left), Value::String(right)) => match (left.parse::<Timestamp>(), right.parse::<Timestamp>()) {
            (Ok(left), Ok(right)) => left.cmp(&right),
            _ => left.cmp(right),
        },
        (Value::Bool(left), Value::Bool(right)) => left.cmp(right),
        _ => Ordering::Equal,
    }
}

/// SOQL LIKE: `%` any run, `_` one character, case-insensitive.
fn like(text: &str, pattern: &str) -> bool {
    fn matches(text: &[char], pattern: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('%', rest)) => (0..=text.len()).any(|skip| text.get(skip..).is_some_and(|tail| matches(tail, rest))),
            Some(('_', rest)) => text.split_first().is_some_and(|(_, tail)| matches(tail, rest)),
            Some((expected, rest)) => text
                .split_first()
                .is_some_and(|(actual, tail)| actual.eq_ignore_ascii_case(expected) && matches(tail, rest)),
        }
    }
    let text: Vec<char> = text.chars().collect();
    let pattern: Vec<char> = pattern.chars().collect();
    matches(&text, &pattern)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn row(field: &str) -> Value {
        match field {
            "SystemModstamp" => json!("2024-05-01T12:00:00.000+0000"),
            "Name" => json!("Acme Ltd"),
            "Amount" => json!(1500.5),
            "IsDeleted" => json!(false),
            "CloseDate" => json!("2024-06-30"),
            _ => Value::Null,
        }
    }

    #[test]
    fn the_queries_crmsync_and_third_party_clients_send_parse() {
        for soql in [
            "SELECT Id, Name FROM Account WHERE SystemModstamp >= 2024-01-02T03:04:05Z ORDER BY SystemModstamp ASC, Id ASC",
            "SELECT Id,Name FROM Account WHERE SystemModstamp >= 2020-01-01T00:00:00Z  ORDER BY SystemModstamp ASC",
            "SELECT Id FROM Opportunity WHERE SystemModstamp >= 2020-01-01T00:00:00.000+0000 AND SystemModstamp < 2026-01-01T00:00:00Z",
            "SELECT Id, Crmsync_Id__c FROM Order WHERE Crmsync_Id__c IN ('a','b')",
            "SELECT COUNT() FROM Lead",
            "select Id from Lead where (IsDeleted = false or Name like 'Ac%') limit 10 offset 5",
        ] {
            parse_soql(soql).unwrap_or_else(|error| panic!("{soql}: {error}"));
        }
        for soql in [
            "SELECT FROM Account",
            "SELECT Id FROM Nope",
            "SELECT Id FROM Account WHERE",
            "SELECT Id FROM Account WHERE Name = 'x",
        ] {
            assert!(parse_soql(soql).is_err(), "{soql}");
        }
    }

    #[test]
    fn conditions_compare_datetimes_numbers_text_and_nulls_as_salesforce_does() {
        let eval = |clause: &str| {
            let soql = parse_soql(&format!("SELECT Id FROM Opportunity WHERE {clause}")).unwrap();
            soql.condition.unwrap().matches(&row)
        };
        assert!(eval("SystemModstamp >= 2024-05-01T12:00:00Z"));
        assert!(eval("SystemModstamp > 2024-05-01T13:00:00+02:00"));
        assert!(!eval("SystemModstamp < 2024-05-01T12:00:00Z"));
        assert!(eval("Amount > 1500 AND Amount <= 1500.5"));
        assert!(eval("CloseDate = 2024-06-30 AND IsDeleted = false"));
        assert!(eval("Name LIKE 'acme%' AND NOT Name IN ('Other')"));
        assert!(eval("Probability = null") && !eval("Probability > 1"));
    }
}
