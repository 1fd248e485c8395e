//! Bold and red on a terminal, plain text otherwise (CI logs).

use std::io::IsTerminal;

fn styled(code: &str, text: &str) -> String {
    if std::io::stderr().is_terminal() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

pub fn bold(text: &str) -> String {
    styled("1", text)
}

pub fn error(text: &str) -> String {
    styled("1;31", text)
}
