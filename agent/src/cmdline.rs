//! Options the host passes to the agent on the guest kernel command line, as `agent.KEY=VALUE`
//! (Kata's convention). Words without the `agent.` prefix belong to the kernel and are ignored.
//!
//! The command line is written by the host's VMM, but a malformed or unknown option must
//! never stop the guest from booting: it becomes a warning in the agent's start-up output.

use std::fmt;

/// The agent's options, with their defaults when absent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentOptions {
    /// `agent.selftest=1`: check the guest, print the result, and stop the VM. Used by the
    /// image's boot test and by `make demo` before a shim drives the agent.
    pub selftest: bool,
    /// `agent.hostname=NAME`: the guest's host name (left as the kernel's when absent).
    pub hostname: Option<String>,
}

/// Something on the command line that the agent did not accept, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The word of the command line, as written.
    pub word: String,
    /// Why it was ignored.
    pub reason: &'static str,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ignored kernel command line option '{}': {}",
            self.word, self.reason
        )
    }
}

/// Parses the agent's options out of a kernel command line (the contents of /proc/cmdline).
pub fn parse(cmdline: &str) -> (AgentOptions, Vec<Warning>) {
    let mut options = AgentOptions::default();
    let mut warnings = Vec::new();
    for word in split_words(cmdline) {
        let Some(option) = word.strip_prefix("agent.") else {
            continue;
        };
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (option, None),
        };
        let warn = |reason| Warning {
            word: word.clone(),
            reason,
        };
        match key {
            "selftest" => match value.map(parse_bool) {
                None => options.selftest = true,
                Some(Some(flag)) => options.selftest = flag,
                Some(None) => warnings.push(warn("expected 0, 1, true or false")),
            },
            "hostname" => match value {
                Some(name) if valid_hostname(name) => options.hostname = Some(name.to_owned()),
                _ => warnings.push(warn(
                    "expected a host name of 1 to 64 letters, digits, '-' or '.'",
                )),
            },
            _ => warnings.push(warn("unknown agent option")),
        }
    }
    (options, warnings)
}

fn parse_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn valid_hostname(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Splits a command line into words the way the kernel does: on white space, except inside
/// double quotes, which are removed.
fn split_words(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut in_word = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_words_are_ignored_and_defaults_apply() {
        let (options, warnings) = parse("console=ttyS0 reboot=t panic=-1 quiet\n");
        assert_eq!(options, AgentOptions::default());
        assert!(warnings.is_empty());
    }

    #[test]
    fn reads_selftest_and_hostname() {
        let (options, warnings) = parse("console=ttyS0 agent.selftest agent.hostname=pod-1");
        assert!(options.selftest);
        assert_eq!(options.hostname.as_deref(), Some("pod-1"));
        assert!(warnings.is_empty());
        let (options, _) = parse("agent.selftest=1 agent.selftest=0");
        assert!(
            !options.selftest,
            "the last occurrence wins, as for kernel options"
        );
    }

    #[test]
    fn bad_values_warn_and_keep_defaults() {
        let (options, warnings) =
            parse("agent.selftest=maybe agent.hostname=a/b agent.frobnicate=1");
        assert_eq!(options, AgentOptions::default());
        let words: Vec<_> = warnings.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(
            words,
            [
                "agent.selftest=maybe",
                "agent.hostname=a/b",
                "agent.frobnicate=1"
            ]
        );
        assert!(warnings[2].to_string().contains("unknown agent option"));
    }

    #[test]
    fn quoted_words_keep_their_spaces() {
        assert_eq!(
            split_words(r#"a "b c" d="e f"  g"#),
            ["a", "b c", "d=e f", "g"]
        );
        let (_, warnings) = parse(r#"agent.hostname="two words""#);
        assert_eq!(warnings.len(), 1);
    }
}
