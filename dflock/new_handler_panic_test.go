package dflock

import (
	"errors"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

var errHandlerBug = errors.New("handler bug")

// attrsPanicHandler is a slog.Handler whose WithAttrs panics.
type attrsPanicHandler struct{ slog.Handler }

func (attrsPanicHandler) WithAttrs([]slog.Attr) slog.Handler { panic(errHandlerBug) }

// New calls the log handler's WithAttrs on the caller's goroutine (a logger
// per server); if it panics, and the caller recovers, New leaves no
// goroutine behind. Not parallel: goleak.Find sees every goroutine.
func TestNewWhoseLogHandlerPanicsLeavesNoGoroutine(t *testing.T) {
	ign := goleak.IgnoreCurrent()
	h := attrsPanicHandler{slog.DiscardHandler}
	p := func() (p any) {
		defer func() { p = recover() }()
		c, err := New([]string{"127.0.0.1:1", "127.0.0.1:2"}, WithLogger(slog.New(h)))
		if err == nil {
			_ = c.Close()
		}
		return nil
	}()
	require.Equal(t, errHandlerBug, p)
	require.NoError(t, goleak.Find(ign))
}
