mod store;
mod util;
