//! Web users (`rhaiflow users`, and the API's `/users` for admins): the rules for names,
//! roles and passwords; the hash is `web::auth::hash_password` (argon2, default parameters).

use super::App;
use crate::store::{Store, WebUserRow};
use crate::web::auth::{MAX_PASSWORD_BYTES, Role, hash_password};
use chrono::{DateTime, Utc};

/// The longest user name.
pub const MAX_USERNAME_CHARS: usize = 64;

/// Why a user could not be created or deleted.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("user `{0}` already exists")]
    Exists(String),
    #[error("no user `{0}` (`rhaiflow users list` shows them)")]
    Unknown(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What `users create` asks for.
pub struct NewUser<'a> {
    pub username: &'a str,
    pub role: &'a str,
    pub password: &'a str,
}

fn check_username(name: &str) -> Result<(), UserError> {
    if name.is_empty() {
        return Err(UserError::Invalid("the user name is empty".into()));
    }
    if name.chars().count() > MAX_USERNAME_CHARS {
        return Err(UserError::Invalid(format!("the user name is longer than {MAX_USERNAME_CHARS} characters")));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control() || c == ':') {
        return Err(UserError::Invalid(format!(
            "user name `{}` has a space, a control character or `:` (basic auth cannot carry it)",
            name.escape_debug()
        )));
    }
    Ok(())
}

impl App {
    /// Adds a web user with the argon2 hash of `password`.
    pub fn create_user(&self, store: &Store, new: &NewUser, now: DateTime<Utc>) -> Result<WebUserRow, UserError> {
        check_username(new.username)?;
        let role: Role = new.role.parse().map_err(UserError::Invalid)?;
        if new.password.is_empty() {
            return Err(UserError::Invalid("the password is empty".into()));
        }
        if new.password.len() > MAX_PASSWORD_BYTES {
            return Err(UserError::Invalid(format!("the password is longer than {MAX_PASSWORD_BYTES} bytes")));
        }
        let hash = hash_password(new.password).map_err(UserError::Invalid)?;
        let user = WebUserRow { username: new.username.to_string(), role: role.name().to_string(), created: now };
        if !store.write(|tx| tx.insert_web_user(&user, &hash))? {
            return Err(UserError::Exists(new.username.to_string()));
        }
        Ok(user)
    }

    /// Removes a web user; their sessions end at their next request.
    /// Deletes a user; never the last admin (nobody could manage users through the API then).
    pub fn delete_user(&self, store: &Store, username: &str) -> Result<(), UserError> {
        let deleted = store.write(|tx| -> Result<Result<bool, UserError>, crate::store::StoreError> {
            let Some(user) = tx.web_user(username)? else { return Ok(Ok(false)) };
            if user.role == "admin" {
                let (all, _) = tx.web_user_page(crate::store::Page::new(crate::store::Page::MAX_LIMIT, 0))?;
                if all.iter().filter(|u| u.role == "admin").count() <= 1 {
                    return Ok(Err(UserError::Invalid(format!(
                        "`{username}` is the last admin; make another admin first (`rhaiflow users create --role admin`)"
                    ))));
                }
            }
            Ok(Ok(tx.delete_web_user(username)?))
        })??;
        if !deleted {
            return Err(UserError::Unknown(username.to_string()));
        }
        Ok(())
    }

    /// Every web user by name (never the hash).
    pub fn users(&self, store: &Store) -> Result<Vec<WebUserRow>, UserError> {
        Ok(store.read(|tx| tx.web_user_page(crate::store::Page::new(crate::store::Page::MAX_LIMIT, 0)))?.0)
    }
}
