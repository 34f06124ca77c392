mod remote;
mod util;
