package dflock

const (
	// DefaultGroupConns is how many listener connections per server a
	// Client gives the members of one queue group at most (see
	// WithGroupConns).
	DefaultGroupConns = 16
	// MaxGroupConns bounds WithGroupConns. Each connection costs a socket
	// and two goroutines on either side and a keepalive ping; past a few
	// dozen per group, members in one process gain nothing the server's
	// round-robin does not already give them.
	MaxGroupConns = 256
)

// WithGroupConns caps the listener connections that the members of one
// queue group (pattern, name) in this Client get per server: each member
// joins on a connection of its own while there are fewer than n, and then
// shares the connection with the fewest members. The server picks a member
// connection round-robin and buffers 64 signals per connection, so a group
// whose members have their own connections gets as large a share of the
// signals, and as much server-side buffering, as members in separate
// processes would. A wildcard group listens on every server, so it costs
// up to n connections per server. With n = 1 all the local members of a
// group share one connection and take turns on what it receives: the
// server then counts them as one member. It must be between 1 and MaxGroupConns.
// Default DefaultGroupConns.
func WithGroupConns(n int) Option {
	return func(o *options) {
		if o.between("group conns", n, 1, MaxGroupConns, "") {
			o.groupConns = n
		}
	}
}

// groupConnLimit is WithGroupConns, or its default.
func (o *options) groupConnLimit() int {
	if o.groupConns == 0 {
		return DefaultGroupConns
	}
	return o.groupConns
}
