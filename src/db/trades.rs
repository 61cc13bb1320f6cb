//! The bot's table as ordersync sees it: the identifiers it may splice into SQL (`SqlIdent`, checked so
//! that configuration can never inject SQL), the columns it maps (`TradesSchema`, from `[trades]`), and the
//! bot's own status words (`StatusWords`). Next to the store that builds its statements from them.
//!
//! Deliberately not here: reading `[trades]` from the file (`config::resolve`), and the statements
//! themselves (`db::sql`).

use std::fmt;

/// A table or column name that is safe to splice into SQL: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes,
/// optionally one `schema.` prefix. Anything else is refused, so config can never inject SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SqlIdent(String);

impl SqlIdent {
    pub fn parse(text: &str) -> Result<Self, String> {
        const EXPECTED: &str =
            "an SQL identifier: letters, digits and _, not starting with a digit, at most 63 characters";
        let valid_part = |part: &str| {
            !part.is_empty()
                && part.len() <= 63
                && part.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        let parts: Vec<&str> = text.split('.').collect();
        if parts.len() <= 2 && parts.iter().all(|part| valid_part(part)) {
            Ok(SqlIdent(text.to_string()))
        } else {
            Err(EXPECTED.to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as it goes into SQL, quoted per part so reserved words work too.
    pub fn quoted(&self) -> String {
        self.0.split('.').map(|part| format!("\"{part}\"")).collect::<Vec<_>>().join(".")
    }
}

impl fmt::Display for SqlIdent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An optional column of the bot's table. A default name that the table lacks is simply not used;
/// a name the user set explicitly must exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalColumn {
    pub name: SqlIdent,
    pub explicit: bool,
}

/// The words the bot writes in its status column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusWords {
    pub pending: String,
    pub completed: String,
    pub cancelled: String,
    pub expired: String,
    pub failed: String,
}

impl Default for StatusWords {
    fn default() -> Self {
        StatusWords {
            pending: "pending".into(),
            completed: "completed".into(),
            cancelled: "cancelled".into(),
            expired: "expired".into(),
            failed: "failed".into(),
        }
    }
}

/// How ordersync maps onto the bot's own table. The bot's schema is the bot's: nothing here is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradesSchema {
    pub table: SqlIdent,
    pub order_id: SqlIdent,
    pub status: SqlIdent,
    pub created_at: SqlIdent,
    pub filled_at: SqlIdent,
    pub bot_id: Option<OptionalColumn>,
    pub product_id: Option<OptionalColumn>,
    pub filled_price: Option<OptionalColumn>,
    pub filled_size: Option<OptionalColumn>,
    /// The column naming each row's Coinbase account (`[trades] account`); none unless configured.
    pub account: Option<OptionalColumn>,
    pub words: StatusWords,
}

impl Default for TradesSchema {
    fn default() -> Self {
        let ident = |name: &str| SqlIdent(name.to_string());
        let optional = |name: &str| Some(OptionalColumn { name: ident(name), explicit: false });
        TradesSchema {
            table: ident("trades"),
            order_id: ident("order_id"),
            status: ident("status"),
            created_at: ident("created_at"),
            filled_at: ident("filled_at"),
            bot_id: optional("bot_id"),
            product_id: optional("product_id"),
            filled_price: optional("filled_price"),
            filled_size: optional("filled_size"),
            account: None,
            words: StatusWords::default(),
        }
    }
}
