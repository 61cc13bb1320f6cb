//! Which Coinbase account a row of the bot's table belongs to. Pure: no I/O.
//!
//! A team runs bots under several Coinbase accounts (API keys, portfolios). Each account has its own key,
//! and Coinbase shows a key only its own account's orders, so an order must be asked about with the key it
//! was placed with, never by guess with another. The configuration says which rows belong to which account:
//! by a column of the bot's table naming the account, by bot id (exact names or glob patterns), and a
//! default account for the rest. A row that matches none is reported and left alone.

use globset::{Glob, GlobSet, GlobSetBuilder};

/// The account name when none is configured (the zero-configuration case: one key).
pub const DEFAULT_ACCOUNT: &str = "default";

/// An account's name: the `account` label of metrics and the `account` column of events.
/// Letters, digits, `-` and `_`, 1 to 32 characters, so it is bounded like the `bot` label.
pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// One account's claim on rows.
#[derive(Debug, Clone)]
pub struct AccountRule {
    pub name: String,
    /// Bot ids (exact, or `*`/`?`/`[…]` patterns) whose rows are this account's.
    pub bots: Vec<String>,
    /// Rows no other rule claims are this account's.
    pub default: bool,
}

/// Where a row belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belongs {
    /// The account at this index of the map.
    To(usize),
    /// No account claims it: reported, never asked about, never written.
    Nowhere,
}

/// The rules, compiled.
#[derive(Debug, Clone)]
pub struct AccountMap {
    names: Vec<String>,
    bots: Vec<GlobSet>,
    default: Option<usize>,
}

/// A rule that cannot work; the message names the account and the pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AccountRuleError(pub String);

impl AccountMap {
    /// One account that every row belongs to: today's single key.
    pub fn single(name: &str) -> AccountMap {
        AccountMap { names: vec![name.to_string()], bots: vec![GlobSet::empty()], default: Some(0) }
    }

    /// Compile the rules. With one account, it is the default whether or not it says so.
    ///
    /// # Errors
    /// A bad glob pattern, or more than one default account.
    pub fn new(rules: &[AccountRule]) -> Result<AccountMap, AccountRuleError> {
        let mut bots = Vec::with_capacity(rules.len());
        for rule in rules {
            let mut set = GlobSetBuilder::new();
            for pattern in &rule.bots {
                let glob = Glob::new(pattern).map_err(|error| {
                    AccountRuleError(format!("account {:?}: bot pattern {pattern:?}: {}", rule.name, error.kind()))
                })?;
                set.add(glob);
            }
            bots.push(set.build().map_err(|error| AccountRuleError(format!("account {:?}: {error}", rule.name)))?);
        }
        let defaults: Vec<usize> = rules.iter().enumerate().filter(|(_, r)| r.default).map(|(i, _)| i).collect();
        let default = match (defaults.as_slice(), rules.len()) {
            ([], 1) => Some(0),
            ([], _) => None,
            ([one], _) => Some(*one),
            (many, _) => {
                let names: Vec<&str> = many.iter().map(|&i| rules[i].name.as_str()).collect();
                return Err(AccountRuleError(format!(
                    "accounts {} all say default = true: at most one account takes the rows no other claims",
                    names.join(", ")
                )));
            }
        };
        Ok(AccountMap { names: rules.iter().map(|r| r.name.clone()).collect(), bots, default })
    }

    /// The accounts' names, in configuration order (an account's index is its place here).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn name(&self, index: usize) -> &str {
        self.names.get(index).map_or(DEFAULT_ACCOUNT, String::as_str)
    }

    /// Whether there is more than one account.
    pub fn is_multi(&self) -> bool {
        self.names.len() > 1
    }

    /// Where a row belongs: the account its account column names (when the table has one and the row fills
    /// it: a name no account has is nowhere, never a guess), else the first account whose bot patterns match
    /// its bot id, else the default account.
    pub fn belongs(&self, account_column: Option<&str>, bot_id: Option<&str>) -> Belongs {
        if let Some(named) = account_column.map(str::trim).filter(|named| !named.is_empty()) {
            return match self.names.iter().position(|name| name == named) {
                Some(index) => Belongs::To(index),
                None => Belongs::Nowhere,
            };
        }
        if let Some(bot) = bot_id {
            if let Some(index) = self.bots.iter().position(|set| set.is_match(bot)) {
                return Belongs::To(index);
            }
        }
        self.default.map_or(Belongs::Nowhere, Belongs::To)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, bots: &[&str], default: bool) -> AccountRule {
        AccountRule { name: name.into(), bots: bots.iter().map(|b| b.to_string()).collect(), default }
    }

    #[test]
    fn one_account_takes_every_row() {
        let map = AccountMap::single(DEFAULT_ACCOUNT);
        for (column, bot) in [(None, None), (None, Some("grid-1")), (Some(""), Some("x"))] {
            assert_eq!(map.belongs(column, bot), Belongs::To(0));
        }
        // Even a lone configured account without `default = true`.
        let map = AccountMap::new(&[rule("main", &["grid-*"], false)]).unwrap();
        assert_eq!(map.belongs(None, Some("dca-1")), Belongs::To(0));
        assert!(!map.is_multi());
    }

    #[test]
    fn the_column_wins_then_the_bot_patterns_then_the_default() {
        let map = AccountMap::new(&[
            rule("main", &[], true),
            rule("hedge", &["hedge-*", "arb-[0-9]"], false),
            rule("grid", &["grid-eth", "grid-btc"], false),
        ])
        .unwrap();
        // The column names the account, whatever the bot.
        assert_eq!(map.belongs(Some("grid"), Some("hedge-1")), Belongs::To(2));
        assert_eq!(map.belongs(Some(" hedge "), None), Belongs::To(1));
        // A name no account has is nowhere: never a guess, never the default.
        assert_eq!(map.belongs(Some("Hedge"), Some("hedge-1")), Belongs::Nowhere);
        assert_eq!(map.belongs(Some("other"), None), Belongs::Nowhere);
        // An empty column falls back to the bot id.
        assert_eq!(map.belongs(Some(""), Some("hedge-7")), Belongs::To(1));
        assert_eq!(map.belongs(None, Some("arb-3")), Belongs::To(1));
        assert_eq!(map.belongs(None, Some("arb-x")), Belongs::To(0));
        assert_eq!(map.belongs(None, Some("grid-eth")), Belongs::To(2));
        assert_eq!(map.belongs(None, Some("grid-sol")), Belongs::To(0), "exact names are exact");
        assert_eq!(map.belongs(None, None), Belongs::To(0));
    }

    #[test]
    fn without_a_default_an_unclaimed_row_is_nowhere() {
        let map = AccountMap::new(&[rule("a", &["a-*"], false), rule("b", &["b-*"], false)]).unwrap();
        assert_eq!(map.belongs(None, Some("a-1")), Belongs::To(0));
        assert_eq!(map.belongs(None, Some("b-1")), Belongs::To(1));
        assert_eq!(map.belongs(None, Some("c-1")), Belongs::Nowhere);
        assert_eq!(map.belongs(None, None), Belongs::Nowhere);
        assert!(map.is_multi());
        assert_eq!(map.name(1), "b");
    }

    #[test]
    fn the_first_matching_account_takes_a_bot_two_patterns_claim() {
        let map = AccountMap::new(&[rule("a", &["grid-*"], false), rule("b", &["grid-eth"], false)]).unwrap();
        assert_eq!(map.belongs(None, Some("grid-eth")), Belongs::To(0));
    }

    #[test]
    fn bad_rules_are_named() {
        let error = AccountMap::new(&[rule("a", &["grid-[", "x"], false)]).unwrap_err();
        assert!(error.0.contains("account \"a\"") && error.0.contains("grid-["), "{error}");
        let error = AccountMap::new(&[rule("a", &[], true), rule("b", &[], true)]).unwrap_err();
        assert!(error.0.contains("a, b") && error.0.contains("at most one"), "{error}");
    }

    #[test]
    fn names_are_bounded_label_values() {
        for good in ["main", "hedge_2", "A-1", &"x".repeat(32)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "has space", "ünï", "a/b", &"x".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
