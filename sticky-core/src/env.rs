//! The environment a Machine runs in, read once at start-up.

/// What the process knows about the Fly Machine it runs on.
///
/// Read it once with [`Env::from_process`]; tests build it by hand. An `Env`
/// without a Machine ID means "not on Fly": every decision is then
/// [`Outcome::Stick`](crate::Outcome::Stick) and nothing is touched.
///
/// ```
/// use sticky_core::Env;
///
/// let env = Env::machine("148ed599c14189").with_region("iad");
/// assert_eq!(env.machine_id.as_deref(), Some("148ed599c14189"));
/// assert!(Env::default().machine_id.is_none());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Env {
    /// `FLY_MACHINE_ID`: this Machine's ID (14 lowercase hex characters on Fly).
    pub machine_id: Option<String>,
    /// `FLY_APP_NAME`.
    pub app_name: Option<String>,
    /// `FLY_REGION`: the 3-letter region this Machine runs in.
    pub region: Option<String>,
}

impl Env {
    /// Reads `FLY_MACHINE_ID`, `FLY_APP_NAME` and `FLY_REGION` from the
    /// process environment. Empty or non-UTF-8 values count as absent.
    pub fn from_process() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds an `Env` from any variable lookup (a map in tests, say).
    ///
    /// ```
    /// use sticky_core::Env;
    ///
    /// let env = Env::from_lookup(|name| (name == "FLY_MACHINE_ID").then(|| " 90801679a10038 ".to_owned()));
    /// assert_eq!(env.machine_id.as_deref(), Some("90801679a10038"));
    /// ```
    pub fn from_lookup(mut lookup: impl FnMut(&str) -> Option<String>) -> Self {
        let mut read = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            machine_id: read("FLY_MACHINE_ID"),
            app_name: read("FLY_APP_NAME"),
            region: read("FLY_REGION"),
        }
    }

    /// An `Env` for the Machine `id`, with no app name or region.
    pub fn machine(id: impl Into<String>) -> Self {
        Self {
            machine_id: Some(id.into()),
            ..Self::default()
        }
    }

    /// Sets the app name.
    #[must_use]
    pub fn with_app(mut self, app: impl Into<String>) -> Self {
        self.app_name = Some(app.into());
        self
    }

    /// Sets the region.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }
}
