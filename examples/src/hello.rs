//! `hello`: an agent that greets every name it reads, and a timer that keeps
//! sending it names, so it has something to do on its own.

use std::time::Duration;

use stream_core::prelude::*;

/// The topics of the example.
#[derive(Debug, Clone)]
pub struct Hello {
    /// Names to greet.
    pub names: Topic<(), String>,
    /// The greetings.
    pub greetings: Topic<(), String>,
}

/// Declares the `greet` agent, and a timer that sends a name every `every`
/// (none when `every` is `None`).
pub fn build(app: &App, every: Option<Duration>) -> Hello {
    let names = app.topic::<(), String>("names");
    let greetings = app.topic::<(), String>("greetings");

    let out = greetings.clone();
    app.agent("greet", &names, move |mut names| {
        let out = out.clone();
        async move {
            while let Some(name) = names.next().await {
                let greeting = format!("Hello, {}!", name.value());
                println!("{greeting}");
                out.send(None, &greeting).await?;
            }
            Ok(())
        }
    });

    if let Some(every) = every {
        let to = names.clone();
        let mut people = ["Ada", "Grace", "Edsger", "Barbara", "Alan"].into_iter().cycle();
        let next = std::sync::Mutex::new(move || people.next().unwrap_or("World"));
        app.timer("send-names", every, move || {
            let name = next.lock().map(|mut n| n()).unwrap_or("World").to_owned();
            let to = to.clone();
            async move {
                to.send(None, &name).await?;
                Ok(())
            }
        });
    }
    Hello { names, greetings }
}
