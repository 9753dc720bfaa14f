//! The OData `$filter` subset Dataverse clients send: comparisons (`eq ne gt ge lt le`), `and`/`or`/`not`,
//! parentheses and `Microsoft.Dynamics.CRM.In`, parsed, checked against a table's columns, and
//! evaluated on a row.

use serde_json::{Map, Value, json};

use super::schema::{Column, column_named, logical, readable};

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Text(String),
    Open,
    Close,
    Comma,
    Equals,
    ListOpen,
    ListClose,
}

fn tokenize(filter: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = filter.chars().collect();
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        let punctuation = match c {
            '(' => Some(Token::Open),
            ')' => Some(Token::Close),
            ',' => Some(Token::Comma),
            '=' => Some(Token::Equals),
            '[' => Some(Token::ListOpen),
            ']' => Some(Token::ListClose),
            _ => None,
        };
        if let Some(token) = punctuation {
            tokens.push(token);
            index += 1;
            continue;
        }
        match c {
            ' ' => index += 1,
            '\'' => {
                let mut text = String::new();
                index += 1;
                loop {
                    match chars.get(index) {
                        None => return Err("unterminated string literal".into()),
                        Some('\'') if chars.get(index + 1) == Some(&'\'') => {
                            text.push('\'');
                            index += 2;
                        }
                        Some('\'') => {
                            index += 1;
                            break;
                        }
                        Some(other) => {
                            text.push(*other);
                            index += 1;
                        }
                    }
                }
                tokens.push(Token::Text(text));
            }
            _ => {
                let start = index;
                while index < chars.len() && !" (),=[]'".contains(chars[index]) {
                    index += 1;
                }
                tokens.push(Token::Ident(chars[start..index].iter().collect()));
            }
        }
    }
    Ok(tokens)
}

#[derive(Debug)]
pub(super) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Compare(String, String, Value),
    In(String, Vec<String>),
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

    fn expect(&mut self, token: &Token) -> Result<(), String> {
        match self.next() {
            Some(found) if &found == token => Ok(()),
            other => Err(format!("expected {token:?}, found {other:?}")),
        }
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while matches!(self.peek(), Some(Token::Ident(word)) if word == "or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while matches!(self.peek(), Some(Token::Ident(word)) if word == "and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        match self.next() {
            Some(Token::Ident(word)) if word == "not" => Ok(Filter::Not(Box::new(self.unary()?))),
            Some(Token::Open) => {
                let inner = self.or()?;
                self.expect(&Token::Close)?;
                Ok(inner)
            }
            Some(Token::Ident(function)) if function == "Microsoft.Dynamics.CRM.In" => {
                self.expect(&Token::Open)?;
                let property = self.named("PropertyName")?;
                self.expect(&Token::Comma)?;
                let Some(Token::Ident(name)) = self.next() else { return Err("expected PropertyValues".into()) };
                if name != "PropertyValues" {
                    return Err(format!("unexpected parameter {name}"));
                }
                self.expect(&Token::Equals)?;
                self.expect(&Token::ListOpen)?;
                let mut values = Vec::new();
                loop {
                    match self.next() {
                        Some(Token::Text(value)) => values.push(value),
                        Some(Token::Comma) => {}
                        Some(Token::ListClose) => break,
                        other => return Err(format!("unexpected {other:?} in PropertyValues")),
                    }
                }
                self.expect(&Token::Close)?;
                Ok(Filter::In(property, values))
            }
            Some(Token::Ident(column)) => {
                let Some(Token::Ident(operator)) = self.next() else {
                    return Err(format!("expected an operator after {column}"));
                };
                if !matches!(operator.as_str(), "eq" | "ne" | "gt" | "ge" | "lt" | "le") {
                    return Err(format!("unknown operator {operator}"));
                }
                let value = match self.next() {
                    Some(Token::Text(text)) => json!(text),
                    Some(Token::Ident(word)) if word == "null" => Value::Null,
                    Some(Token::Ident(word)) => match word.parse::<f64>() {
                        Ok(_) => serde_json::from_str(&word).unwrap_or(json!(word)),
                        Err(_) => json!(word),
                    },
                    other => return Err(format!("expected a value, found {other:?}")),
                };
                Ok(Filter::Compare(column, operator, value))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn named(&mut self, parameter: &str) -> Result<String, String> {
        match (self.next(), self.next(), self.next()) {
            (Some(Token::Ident(name)), Some(Token::Equals), Some(Token::Text(value))) if name == parameter => Ok(value),
            other => Err(format!("expected {parameter}='…', found {other:?}")),
        }
    }
}

pub(super) fn parse_filter(filter: &str) -> Result<Filter, String> {
    let mut parser = Parser { tokens: tokenize(filter)?, at: 0 };
    let parsed = parser.or()?;
    match parser.peek() {
        None => Ok(parsed),
        Some(token) => Err(format!("unexpected {token:?} after the expression")),
    }
}

/// The row property a comparison names: a structural property (`_salesorderid_value` for a lookup,
/// never its logical name, which is a navigation property in the Web API's model).
fn property_for(set: &str, property: &str) -> Option<String> {
    readable(set).into_iter().find(|known| known == property)
}

/// The row property a query function's `PropertyName` names: query functions take the column's
/// logical name (`salesorderid`), as FetchXML does
/// (powerapps-docs:…/webapi/query/filter-rows.md, "Dataverse query functions").
fn attribute_for(set: &str, logical_name: &str) -> Option<String> {
    column_named(set, logical_name)
        .map(Column::property)
        .or_else(|| readable(set).into_iter().find(|known| known == logical_name && !known.starts_with('_')))
}

pub(super) fn check_filter(set: &str, filter: &Filter) -> Result<(), String> {
    match filter {
        Filter::And(left, right) | Filter::Or(left, right) => {
            check_filter(set, left)?;
            check_filter(set, right)
        }
        Filter::Not(inner) => check_filter(set, inner),
        Filter::Compare(column, ..) => property_for(set, column).map(|_| ()).ok_or_else(|| {
            format!("Could not find a property named '{column}' on type 'Microsoft.Dynamics.CRM.{}'.", logical(set))
        }),
        Filter::In(column, _) => attribute_for(set, column)
            .map(|_| ())
            .ok_or_else(|| format!("'{column}' is not a valid attribute name of entity '{}'.", logical(set))),
    }
}

pub(super) fn compare(left: &Value, right: &Value) -> Option<std::cmp::Ordering> {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64()?.partial_cmp(&b.as_f64()?),
        (Value::String(a), Value::String(b)) => Some(a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase())),
        (Value::Null, Value::Null) => Some(std::cmp::Ordering::Equal),
        _ => None,
    }
}

pub(super) fn matches(set: &str, fields: &Map<String, Value>, filter: &Filter) -> bool {
    match filter {
        Filter::And(left, right) => matches(set, fields, left) && matches(set, fields, right),
        Filter::Or(left, right) => matches(set, fields, left) || matches(set, fields, right),
        Filter::Not(inner) => !matches(set, fields, inner),
        Filter::In(property, values) => {
            let column = attribute_for(set, property).unwrap_or_default();
            let value = fields.get(&column).and_then(Value::as_str).unwrap_or_default();
            values.iter().any(|candidate| candidate.eq_ignore_ascii_case(value))
        }
        Filter::Compare(property, operator, value) => {
            let column = property_for(set, property).unwrap_or_default();
            let current = fields.get(&column).cloned().unwrap_or(Value::Null);
            let ordering = compare(&current, value);
            match operator.as_str() {
                "eq" => ordering == Some(std::cmp::Ordering::Equal),
                "ne" => ordering != Some(std::cmp::Ordering::Equal),
                "gt" => ordering == Some(std::cmp::Ordering::Greater),
                "ge" => matches!(ordering, Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)),
                "lt" => ordering == Some(std::cmp::Ordering::Less),
                _ => matches!(ordering, Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)),
            }
        }
    }
}
