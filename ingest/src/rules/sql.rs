//! The rule language: a lexer and a hand-written recursive-descent parser for AWS IoT-style SQL,
//!
//! ```text
//! rule      := SELECT items FROM 'topic filter' [WHERE expr]
//! items     := item (',' item)*
//! item      := '*' | expr [AS ident]
//! expr      := or
//! or        := and (OR and)*
//! and       := not (AND not)*
//! not       := NOT not | cmp
//! cmp       := add [(= | <> | != | < | <= | > | >=) add | IS [NOT] NULL]
//! add       := mul ((+ | -) mul)*
//! mul       := unary ((* | / | %) unary)*
//! unary     := - unary | primary
//! primary   := number | 'string' | TRUE | FALSE | NULL | '(' expr ')'
//!            | func '(' [args] ')' | path
//! path      := ident ('.' ident | '[' integer ']')*
//! ```
//!
//! Keywords and function names are case-insensitive; field names are case-sensitive. Identifiers are
//! `[A-Za-z_][A-Za-z0-9_]*`, or any text in double quotes (`"my-field"`). Every error carries the 1-based
//! character position where it was found and a reason, so a bad rule stops startup with a message a person can act on.

use std::fmt;

/// A parse error: where (1-based character position in the source) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at position {position}: {reason}")]
pub struct ParseError {
    pub position: usize,
    pub reason: String,
}

impl ParseError {
    fn new(position: usize, reason: impl Into<String>) -> Self {
        Self {
            position: position + 1,
            reason: reason.into(),
        }
    }
}

/// A parsed rule statement.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    pub items: Vec<SelectItem>,
    pub topic_filter: String,
    pub condition: Option<Expr>,
}

/// One item of the SELECT list.
#[derive(Clone, Debug, PartialEq)]
pub enum SelectItem {
    /// `*`: every field of the payload.
    Wildcard,
    /// An expression, named by its alias, or else by the last field of a path or the function's name,
    /// or else `_<n>` (its 1-based position in the list).
    Expr { expr: Expr, name: String },
}

/// The functions the rule language knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// `topic()`: the whole topic; `topic(n)`: its n-th level, 1-based.
    Topic,
    /// `clientid()`: the MQTT client id of the publisher.
    ClientId,
    /// `timestamp()`: the arrival time of the publish, epoch milliseconds.
    Timestamp,
    /// `newuuid()`: a random (v4) UUID.
    NewUuid,
}

impl Function {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "topic" => Some(Function::Topic),
            "clientid" => Some(Function::ClientId),
            "timestamp" => Some(Function::Timestamp),
            "newuuid" => Some(Function::NewUuid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Function::Topic => "topic",
            Function::ClientId => "clientid",
            Function::Timestamp => "timestamp",
            Function::NewUuid => "newuuid",
        }
    }

    /// Allowed argument counts.
    fn arity(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Function::Topic => 0..=1,
            Function::ClientId | Function::Timestamp | Function::NewUuid => 0..=0,
        }
    }
}

/// A step of a field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathStep {
    Field(String),
    Index(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

impl fmt::Display for BinaryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "<>",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
        })
    }
}

/// An expression. Literals hold JSON values so evaluation works in one value space.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Literal(serde_json::Value),
    Path(Vec<PathStep>),
    Call(Function, Vec<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    IsNull { expr: Box<Expr>, negated: bool },
    Binary(Box<Expr>, BinaryOp, Box<Expr>),
}

/// Parse a whole rule statement.
pub fn parse_statement(source: &str) -> Result<Statement, ParseError> {
    let mut p = Parser::new(source)?;
    p.expect_keyword("SELECT")?;
    let mut items = Vec::new();
    loop {
        let n = items.len() + 1;
        items.push(p.select_item(n)?);
        if !p.eat(&Tok::Comma) {
            break;
        }
    }
    p.expect_keyword("FROM")?;
    let topic_filter = match p.next() {
        (Tok::Str(s), pos) => {
            validate_filter(&s).map_err(|reason| ParseError::new(pos, reason))?;
            s
        }
        (tok, pos) => {
            return Err(ParseError::new(
                pos,
                format!("expected a single-quoted topic filter after FROM, found {tok}"),
            ));
        }
    };
    let condition = if p.eat_keyword("WHERE") {
        Some(p.expr()?)
    } else {
        None
    };
    p.expect_end()?;
    Ok(Statement {
        items,
        topic_filter,
        condition,
    })
}

/// Parse one expression, the whole of `source` (used by `${...}` templates).
pub fn parse_expr(source: &str) -> Result<Expr, ParseError> {
    let mut p = Parser::new(source)?;
    let expr = p.expr()?;
    p.expect_end()?;
    Ok(expr)
}

/// Check an MQTT topic filter: non-empty, `+` only as a whole level, `#` only as the whole last level.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("the topic filter is empty".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "topic filter {filter:?}: '#' must be a whole level and the last one"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("topic filter {filter:?}: '+' must be a whole level"));
        }
    }
    if filter.contains('\0') {
        return Err(format!("topic filter {filter:?} contains a NUL character"));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    QuotedIdent(String),
    Number(serde_json::Number),
    Str(String),
    Comma,
    Dot,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Star,
    Plus,
    Minus,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "'{s}'"),
            Tok::QuotedIdent(s) => write!(f, "\"{s}\""),
            Tok::Number(n) => write!(f, "number {n}"),
            Tok::Str(s) => write!(f, "string '{s}'"),
            Tok::Comma => f.write_str("','"),
            Tok::Dot => f.write_str("'.'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::LBracket => f.write_str("'['"),
            Tok::RBracket => f.write_str("']'"),
            Tok::Star => f.write_str("'*'"),
            Tok::Plus => f.write_str("'+'"),
            Tok::Minus => f.write_str("'-'"),
            Tok::Slash => f.write_str("'/'"),
            Tok::Percent => f.write_str("'%'"),
            Tok::Eq => f.write_str("'='"),
            Tok::NotEq => f.write_str("'<>'"),
            Tok::Lt => f.write_str("'<'"),
            Tok::LtEq => f.write_str("'<='"),
            Tok::Gt => f.write_str("'>'"),
            Tok::GtEq => f.write_str("'>='"),
            Tok::End => f.write_str("the end of the statement"),
        }
    }
}

/// Split `source` into tokens with their 0-based character positions.
fn lex(source: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let tok = match c {
            ',' => Tok::Comma,
            '.' if !chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()) => Tok::Dot,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            '[' => Tok::LBracket,
            ']' => Tok::RBracket,
            '*' => Tok::Star,
            '+' => Tok::Plus,
            '-' => Tok::Minus,
            '/' => Tok::Slash,
            '%' => Tok::Percent,
            '=' => Tok::Eq,
            '!' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Tok::NotEq
            }
            '<' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Tok::LtEq
            }
            '<' if chars.get(i + 1) == Some(&'>') => {
                i += 1;
                Tok::NotEq
            }
            '<' => Tok::Lt,
            '>' if chars.get(i + 1) == Some(&'=') => {
                i += 1;
                Tok::GtEq
            }
            '>' => Tok::Gt,
            '\'' | '"' => {
                // Quoted: a doubled quote stands for one.
                let quote = c;
                let mut text = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(ParseError::new(
                                start,
                                format!("unterminated {} starting here", quote_name(quote)),
                            ));
                        }
                        Some(&q) if q == quote && chars.get(i + 1) == Some(&quote) => {
                            text.push(quote);
                            i += 2;
                        }
                        Some(&q) if q == quote => break,
                        Some(&other) => {
                            text.push(other);
                            i += 1;
                        }
                    }
                }
                if quote == '\'' {
                    Tok::Str(text)
                } else if text.is_empty() {
                    return Err(ParseError::new(start, "empty quoted identifier"));
                } else {
                    Tok::QuotedIdent(text)
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                let mut j = i;
                while j < chars.len() && chars[j].is_ascii_digit() {
                    j += 1;
                }
                if chars.get(j) == Some(&'.') {
                    j += 1;
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                }
                if matches!(chars.get(j), Some('e' | 'E')) {
                    let mut k = j + 1;
                    if matches!(chars.get(k), Some('+' | '-')) {
                        k += 1;
                    }
                    if chars.get(k).is_some_and(|d| d.is_ascii_digit()) {
                        while k < chars.len() && chars[k].is_ascii_digit() {
                            k += 1;
                        }
                        j = k;
                    }
                }
                let text: String = chars[i..j].iter().collect();
                if chars
                    .get(j)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '_')
                {
                    return Err(ParseError::new(
                        start,
                        format!("malformed number starting with {text:?}"),
                    ));
                }
                i = j - 1;
                Tok::Number(
                    parse_number(&text)
                        .ok_or_else(|| ParseError::new(start, format!("number {text} is out of range")))?,
                )
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                i = j - 1;
                Tok::Ident(text)
            }
            other => {
                return Err(ParseError::new(start, format!("unexpected character {other:?}")));
            }
        };
        out.push((tok, start));
        i += 1;
    }
    out.push((Tok::End, chars.len()));
    Ok(out)
}

fn quote_name(quote: char) -> &'static str {
    if quote == '\'' {
        "string"
    } else {
        "quoted identifier"
    }
}

fn parse_number(text: &str) -> Option<serde_json::Number> {
    if !text.contains(['.', 'e', 'E'])
        && let Ok(i) = text.parse::<i64>()
    {
        return Some(i.into());
    }
    text.parse::<f64>().ok().and_then(serde_json::Number::from_f64)
}

const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AS", "AND", "OR", "NOT", "IS", "NULL", "TRUE", "FALSE",
];

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
}

impl Parser {
    fn new(source: &str) -> Result<Self, ParseError> {
        Ok(Self {
            toks: lex(source)?,
            at: 0,
        })
    }

    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> usize {
        self.toks[self.at].1
    }

    fn next(&mut self) -> (Tok, usize) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == tok {
            self.next();
            true
        } else {
            false
        }
    }

    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(kw))
    }

    fn eat_keyword(&mut self, kw: &str) -> bool {
        if self.is_keyword(kw) {
            self.next();
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        if self.eat_keyword(kw) {
            Ok(())
        } else {
            Err(ParseError::new(
                self.pos(),
                format!("expected {kw}, found {}", self.peek()),
            ))
        }
    }

    fn expect(&mut self, tok: Tok) -> Result<(), ParseError> {
        if self.eat(&tok) {
            Ok(())
        } else {
            Err(ParseError::new(
                self.pos(),
                format!("expected {tok}, found {}", self.peek()),
            ))
        }
    }

    fn expect_end(&mut self) -> Result<(), ParseError> {
        if *self.peek() == Tok::End {
            Ok(())
        } else {
            Err(ParseError::new(
                self.pos(),
                format!("unexpected {} after the end of the statement", self.peek()),
            ))
        }
    }

    fn select_item(&mut self, n: usize) -> Result<SelectItem, ParseError> {
        if *self.peek() == Tok::Star {
            self.next();
            return Ok(SelectItem::Wildcard);
        }
        let expr = self.expr()?;
        let name = if self.eat_keyword("AS") {
            match self.next() {
                (Tok::Ident(s), pos) => {
                    if RESERVED.iter().any(|kw| s.eq_ignore_ascii_case(kw)) {
                        return Err(ParseError::new(
                            pos,
                            format!("{s} is a keyword; quote it (\"{s}\") to use it as a name"),
                        ));
                    }
                    s
                }
                (Tok::QuotedIdent(s), _) => s,
                (tok, pos) => {
                    return Err(ParseError::new(
                        pos,
                        format!("expected a name after AS, found {tok}"),
                    ));
                }
            }
        } else {
            match &expr {
                Expr::Path(steps) => match steps.iter().rev().find_map(|s| match s {
                    PathStep::Field(f) => Some(f.clone()),
                    PathStep::Index(_) => None,
                }) {
                    Some(f) => f,
                    None => format!("_{n}"),
                },
                Expr::Call(f, _) => f.name().to_string(),
                _ => format!("_{n}"),
            }
        };
        Ok(SelectItem::Expr { expr, name })
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.or()
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.eat_keyword("OR") {
            let right = self.and()?;
            left = Expr::Binary(Box::new(left), BinaryOp::Or, Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.not()?;
        while self.eat_keyword("AND") {
            let right = self.not()?;
            left = Expr::Binary(Box::new(left), BinaryOp::And, Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }

    fn cmp(&mut self) -> Result<Expr, ParseError> {
        let left = self.add()?;
        if self.eat_keyword("IS") {
            let negated = self.eat_keyword("NOT");
            self.expect_keyword("NULL")?;
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        let op = match self.peek() {
            Tok::Eq => BinaryOp::Eq,
            Tok::NotEq => BinaryOp::NotEq,
            Tok::Lt => BinaryOp::Lt,
            Tok::LtEq => BinaryOp::LtEq,
            Tok::Gt => BinaryOp::Gt,
            Tok::GtEq => BinaryOp::GtEq,
            _ => return Ok(left),
        };
        self.next();
        let right = self.add()?;
        if matches!(
            self.peek(),
            Tok::Eq | Tok::NotEq | Tok::Lt | Tok::LtEq | Tok::Gt | Tok::GtEq
        ) {
            return Err(ParseError::new(
                self.pos(),
                "comparisons do not chain; combine them with AND",
            ));
        }
        Ok(Expr::Binary(Box::new(left), op, Box::new(right)))
    }

    fn add(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.mul()?;
        loop {
            let op = match self.peek() {
                Tok::Plus => BinaryOp::Add,
                Tok::Minus => BinaryOp::Sub,
                _ => return Ok(left),
            };
            self.next();
            let right = self.mul()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn mul(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        loop {
            let op = match self.peek() {
                Tok::Star => BinaryOp::Mul,
                Tok::Slash => BinaryOp::Div,
                Tok::Percent => BinaryOp::Rem,
                _ => return Ok(left),
            };
            self.next();
            let right = self.unary()?;
            left = Expr::Binary(Box::new(left), op, Box::new(right));
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.eat(&Tok::Minus) {
            return Ok(match self.unary()? {
                Expr::Literal(serde_json::Value::Number(n)) => Expr::Literal(negate(&n)),
                other => Expr::Neg(Box::new(other)),
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (tok, pos) = self.next();
        match tok {
            Tok::Number(n) => Ok(Expr::Literal(serde_json::Value::Number(n))),
            Tok::Str(s) => Ok(Expr::Literal(serde_json::Value::String(s))),
            Tok::LParen => {
                let e = self.expr()?;
                self.expect(Tok::RParen)?;
                Ok(e)
            }
            Tok::Ident(name) if *self.peek() == Tok::LParen => {
                let Some(f) = Function::parse(&name) else {
                    return Err(ParseError::new(
                        pos,
                        format!(
                            "unknown function {name}(); known: topic(), topic(n), clientid(), timestamp(), newuuid()"
                        ),
                    ));
                };
                self.next();
                let mut args = Vec::new();
                if !self.eat(&Tok::RParen) {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(&Tok::RParen) {
                            break;
                        }
                        self.expect(Tok::Comma)?;
                    }
                }
                if !f.arity().contains(&args.len()) {
                    return Err(ParseError::new(
                        pos,
                        format!(
                            "{}() takes {} argument(s), got {}",
                            f.name(),
                            arity_text(f.arity()),
                            args.len()
                        ),
                    ));
                }
                if f == Function::Topic
                    && let Some(arg) = args.first()
                {
                    match arg {
                        Expr::Literal(serde_json::Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 1) => {
                        }
                        _ => {
                            return Err(ParseError::new(
                                pos,
                                "topic(n) takes a literal level number n >= 1",
                            ));
                        }
                    }
                }
                Ok(Expr::Call(f, args))
            }
            Tok::Ident(word) if word.eq_ignore_ascii_case("TRUE") => {
                Ok(Expr::Literal(serde_json::Value::Bool(true)))
            }
            Tok::Ident(word) if word.eq_ignore_ascii_case("FALSE") => {
                Ok(Expr::Literal(serde_json::Value::Bool(false)))
            }
            Tok::Ident(word) if word.eq_ignore_ascii_case("NULL") => {
                Ok(Expr::Literal(serde_json::Value::Null))
            }
            Tok::Ident(word) if RESERVED.iter().any(|kw| word.eq_ignore_ascii_case(kw)) => Err(
                ParseError::new(pos, format!("expected an expression, found keyword {word}")),
            ),
            Tok::Ident(name) | Tok::QuotedIdent(name) => self.path(name),
            other => Err(ParseError::new(
                pos,
                format!("expected an expression, found {other}"),
            )),
        }
    }

    fn path(&mut self, first: String) -> Result<Expr, ParseError> {
        let mut steps = vec![PathStep::Field(first)];
        loop {
            if self.eat(&Tok::Dot) {
                match self.next() {
                    (Tok::Ident(s), pos) if RESERVED.iter().any(|kw| s.eq_ignore_ascii_case(kw)) => {
                        return Err(ParseError::new(
                            pos,
                            format!(
                                "expected a field name after '.', found keyword {s}; quote it (\"{s}\") to use it as a name"
                            ),
                        ));
                    }
                    (Tok::Ident(s) | Tok::QuotedIdent(s), _) => steps.push(PathStep::Field(s)),
                    (tok, pos) => {
                        return Err(ParseError::new(
                            pos,
                            format!("expected a field name after '.', found {tok}"),
                        ));
                    }
                }
            } else if self.eat(&Tok::LBracket) {
                match self.next() {
                    (Tok::Number(n), pos) => {
                        let Some(i) = n.as_u64().and_then(|i| usize::try_from(i).ok()) else {
                            return Err(ParseError::new(
                                pos,
                                format!("array index {n} is not a non-negative integer"),
                            ));
                        };
                        steps.push(PathStep::Index(i));
                    }
                    (tok, pos) => {
                        return Err(ParseError::new(
                            pos,
                            format!("expected an array index, found {tok}"),
                        ));
                    }
                }
                self.expect(Tok::RBracket)?;
            } else {
                return Ok(Expr::Path(steps));
            }
        }
    }
}

fn arity_text(r: std::ops::RangeInclusive<usize>) -> String {
    if r.start() == r.end() {
        r.start().to_string()
    } else {
        format!("{} to {}", r.start(), r.end())
    }
}

fn negate(n: &serde_json::Number) -> serde_json::Value {
    if let Some(i) = n.as_i64().and_then(i64::checked_neg) {
        return serde_json::Value::from(i);
    }
    n.as_f64()
        .and_then(|f| serde_json::Number::from_f64(-f))
        .map(serde_json::Value::Number)
        .unwrap_or(serde_json::Value::Null)
}
