//! A real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`; `.ci/run` installs them), for the console's tests.
//! Each [`Browser`] runs its own chromedriver on a free port and stops it
//! when dropped.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Where chromedriver and Chromium are expected (overridable for machines
/// that keep them elsewhere).
fn chromedriver() -> String {
    std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".to_owned())
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Where each run saves its screenshots: `target/console-screenshots/`.
pub fn screenshot_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp directory has a parent")
        .join("console-screenshots")
}

/// How long a page or an element is waited for.
const WAIT: Duration = Duration::from_secs(5);

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// Tallest screenshot, in pixels.
const MAX_SCREENSHOT_HEIGHT: u64 = 6000;

/// A headless Chromium session and the chromedriver behind it.
pub struct Browser {
    pub client: Client,
    base: String,
    _driver: Child,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium at 1280×900, pointed at
    /// the console of the API at `base` (`http://127.0.0.1:port`).
    pub async fn start(base: &str) -> Self {
        let port = taskflow_testkit::free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "{}: {error}; install Debian's chromium and chromium-driver (.ci/run does)",
                    chromedriver()
                )
            });
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium(),
                // No sandbox: CI runs as root, where Chromium's own sandbox
                // cannot start. The pages are our own.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--hide-scrollbars", "--lang=en-US"]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("chromedriver did not start a session: {error}"),
            }
        };
        Self {
            client,
            base: base.to_owned(),
            _driver: driver,
        }
    }

    /// Opens `path` of the API (`/ui/jobs`).
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|error| panic!("open {path}: {error}"));
    }

    /// The path (and query) of the page shown.
    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("a current URL");
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The text of the first element matching `css`. The console swaps in
    /// a fresh `<main>` every few seconds (console.js, `refreshEvery`), so
    /// an element found may be gone when read (Chrome says "stale", or that
    /// the node is not in the document): it is found again then.
    pub async fn text(&self, css: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.find(css).await.text().await {
                Ok(text) => return text,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(error) => panic!("text of {css}: {error}"),
            }
        }
    }

    /// The text of the whole page.
    pub async fn page_text(&self) -> String {
        self.text("body").await
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("no element {css}: {error}"))
    }

    /// Clicks the link or form button matching `css` and waits until the
    /// page it loads has replaced this one and finished loading.
    /// ChromeDriver's click does not always wait for the navigation it
    /// starts, and the next read would find the old page's elements (or
    /// find them gone). The old page is told apart by a mark left on its
    /// window, which the new page's window lacks.
    pub async fn click(&self, css: &str) {
        self.eval("window.taskflowPageBeforeClick = true").await;
        self.click_in_page(css).await;
        let deadline = Instant::now() + WAIT;
        loop {
            // While the page changes a script may fail: look again.
            let loaded = self
                .client
                .execute(
                    "return !window.taskflowPageBeforeClick && document.readyState === 'complete'",
                    Vec::new(),
                )
                .await;
            if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "clicking {css} loaded no page within {WAIT:?}: {loaded:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the control matching `css` (a checkbox) without leaving the page.
    pub async fn click_in_page(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|error| panic!("click {css}: {error}"));
    }

    /// Types `text` into the field matching `css`.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.find(css)
            .await
            .send_keys(text)
            .await
            .unwrap_or_else(|error| panic!("type into {css}: {error}"));
    }

    /// Runs `script` in the page and returns its value.
    pub async fn eval(&self, script: &str) -> serde_json::Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}"))
    }

    /// Resizes the window so the page is `width` CSS pixels wide.
    pub async fn set_width(&self, width: u32) {
        self.client
            .set_window_size(width, 900)
            .await
            .expect("the window resizes");
    }

    /// Saves a screenshot of the whole page, not only what the window shows,
    /// as `target/console-screenshots/{name}.png`: the window is made as
    /// tall as the page (up to [`MAX_SCREENSHOT_HEIGHT`]) for the shot.
    pub async fn screenshot(&self, name: &str) {
        let (width, height) = self.client.get_window_size().await.expect("a window size");
        let pixels_u32 = |value: u64| u32::try_from(value).expect("a window fits in u32 pixels");
        let heights = self
            .client
            .execute(
                "return [document.documentElement.scrollHeight, window.innerHeight]",
                vec![],
            )
            .await
            .expect("the page's heights");
        let pixels = |index: usize| heights[index].as_u64().expect("a height in pixels");
        let (page, viewport) = (pixels(0), pixels(1));
        let tall = (page + height.saturating_sub(viewport)).min(MAX_SCREENSHOT_HEIGHT);
        if tall > height {
            let (width, tall) = (pixels_u32(width), pixels_u32(tall));
            self.client
                .set_window_size(width, tall)
                .await
                .expect("the window grows");
        }
        let png = self.client.screenshot().await.expect("a screenshot");
        if tall > height {
            let (width, height) = (pixels_u32(width), pixels_u32(height));
            self.client
                .set_window_size(width, height)
                .await
                .expect("the window shrinks back");
        }
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("the screenshot directory can be made");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("the screenshot is saved");
    }

    /// Ends the browser session (chromedriver stops when dropped).
    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}
