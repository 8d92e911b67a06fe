//! The calls of the agent service, by name: what an agent reports in
//! `GuestDetailsResponse.supported_calls` and names in its UNIMPLEMENTED errors.

use std::fmt;

macro_rules! calls {
    ($($variant:ident),+ $(,)?) => {
        /// One call (ttrpc method) of `hull.agent.v1.AgentService`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(missing_docs)] // Each is documented in agent.proto.
        pub enum Call {
            $($variant),+
        }

        impl Call {
            /// Every call, in the order of agent.proto.
            pub const ALL: &'static [Call] = &[$(Call::$variant),+];

            /// The method name as it travels in a ttrpc request (`"CreateContainer"`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Call::$variant => stringify!($variant)),+
                }
            }
        }
    };
}

calls!(
    CreateSandbox,
    DestroySandbox,
    CreateContainer,
    StartContainer,
    RemoveContainer,
    PauseContainer,
    ResumeContainer,
    StatsContainer,
    UpdateContainer,
    ListProcesses,
    ExecProcess,
    SignalProcess,
    WaitProcess,
    RemoveProcess,
    WriteStdin,
    ReadStdout,
    ReadStderr,
    CloseStdin,
    TtyWinResize,
    GetOOMEvent,
    UpdateInterface,
    UpdateRoutes,
    ListInterfaces,
    GetGuestDetails,
    Check,
    GetMetrics,
    SetGuestDateTime,
    CopyFile,
);

impl Call {
    /// The call named `name`, if the service has one.
    pub fn from_name(name: &str) -> Option<Call> {
        Call::ALL.iter().copied().find(|call| call.name() == name)
    }

    /// The call's full ttrpc path, `/hull.agent.v1.AgentService/<name>`.
    pub fn path(self) -> String {
        format!("/{}/{}", crate::SERVICE_NAME, self.name())
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::{create_agent_service, AgentService, SERVICE_NAME};

    #[test]
    fn lists_exactly_the_methods_of_the_generated_service() {
        struct Nothing;
        impl AgentService for Nothing {}
        let services = create_agent_service(Arc::new(Nothing));
        let service = services
            .get(SERVICE_NAME)
            .expect("the service is registered by name");
        let generated: BTreeSet<&str> = service.methods.keys().map(String::as_str).collect();
        let listed: BTreeSet<&str> = Call::ALL.iter().map(|c| c.name()).collect();
        assert_eq!(listed, generated);
        assert_eq!(listed.len(), Call::ALL.len(), "a call is listed twice");
    }

    #[test]
    fn names_round_trip_and_paths_are_fully_qualified() {
        for call in Call::ALL {
            assert_eq!(Call::from_name(call.name()), Some(*call));
        }
        assert_eq!(Call::from_name("Frobnicate"), None);
        assert_eq!(Call::Check.path(), "/hull.agent.v1.AgentService/Check");
    }
}
