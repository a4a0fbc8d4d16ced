//! Web users (`rhaiflow users`, `[webserver] auth = "password"`): name, role and the argon2 hash
//! of the password. The hash is read only to check a password; listings never select it.

use super::{Page, StoreResult, Tx};
use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, params};

/// A web user as listings show it (no hash).
#[derive(Debug, Clone, PartialEq)]
pub struct WebUserRow {
    pub username: String,
    /// `viewer`, `operator` or `admin` (the service layer checks it on the way in).
    pub role: String,
    pub created: DateTime<Utc>,
}

fn user_row(r: &rusqlite::Row) -> rusqlite::Result<WebUserRow> {
    Ok(WebUserRow { username: r.get(0)?, role: r.get(1)?, created: r.get(2)? })
}

impl Tx<'_> {
    /// Adds a user; `false` when the name is taken (nothing changes).
    pub fn insert_web_user(&self, user: &WebUserRow, password_hash: &str) -> StoreResult<bool> {
        let n = self.tx.execute(
            "INSERT INTO web_user (username, role, password_hash, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (username) DO NOTHING",
            params![user.username, user.role, password_hash, user.created],
        )?;
        Ok(n == 1)
    }

    /// Removes a user; `false` when there was none.
    pub fn delete_web_user(&self, username: &str) -> StoreResult<bool> {
        Ok(self.tx.execute("DELETE FROM web_user WHERE username = ?1", [username])? == 1)
    }

    /// One user, without the hash.
    pub fn web_user(&self, username: &str) -> StoreResult<Option<WebUserRow>> {
        Ok(self
            .tx
            .prepare_cached("SELECT username, role, created FROM web_user WHERE username = ?1")?
            .query_row([username], user_row)
            .optional()?)
    }

    /// One user with the PHC string of their password's hash, to check a password against.
    pub fn web_user_with_hash(&self, username: &str) -> StoreResult<Option<(WebUserRow, String)>> {
        Ok(self
            .tx
            .prepare_cached("SELECT username, role, created, password_hash FROM web_user WHERE username = ?1")?
            .query_row([username], |r| Ok((user_row(r)?, r.get(3)?)))
            .optional()?)
    }

    /// A page of users by name, with the total.
    pub fn web_user_page(&self, page: Page) -> StoreResult<(Vec<WebUserRow>, u64)> {
        let sql = format!(
            "SELECT username, role, created FROM web_user ORDER BY username LIMIT {} OFFSET {}",
            page.limit, page.offset
        );
        let rows: Vec<WebUserRow> = self.tx.prepare_cached(&sql)?.query_map([], user_row)?.collect::<Result<_, _>>()?;
        let n: i64 = self.tx.prepare_cached("SELECT COUNT(*) FROM web_user")?.query_row([], |r| r.get(0))?;
        Ok((rows, n.max(0) as u64))
    }
}
