//! The TCP control API's bearer token, read from `[agent] api_token_file`: a secret, so
//! the file must be private to its owner (as ssh requires of its keys).

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
#[error("the control API token in {path}: {problem}")]
pub struct TokenError {
    path: PathBuf,
    problem: String,
}

/// The token (surrounding white space ignored), from a file no one but its owner can
/// read or write.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let error = |problem: String| TokenError {
        path: path.to_owned(),
        problem,
    };
    let mode = std::fs::metadata(path)
        .map_err(|err| error(err.to_string()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(error(format!(
            "others than its owner can access it (mode {:04o}): restrict it with `chmod 600 {}`",
            mode & 0o7777,
            path.display()
        )));
    }
    let token = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt};

    use super::read_token;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let path = std::env::temp_dir().join(format!("weir-token-{}", std::process::id()));
        fs::write(&path, "s3cret\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            read_token(&path).unwrap_err().to_string(),
            format!(
                "the control API token in {0}: others than its owner can access it \
                 (mode 0644): restrict it with `chmod 600 {0}`",
                path.display()
            )
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&path).unwrap(), "s3cret");
        fs::write(&path, " \n").unwrap();
        assert!(
            read_token(&path)
                .unwrap_err()
                .to_string()
                .ends_with("the file is empty")
        );
        fs::remove_file(&path).unwrap();
    }
}
