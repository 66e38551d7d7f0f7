//! Union tree: merged lower layers, upper directory, copy-up. Knows neither fuser nor HTTP.
