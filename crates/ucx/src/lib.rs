//! A thin, safe binding of the system UCX.
