package testutil

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRunProcessServesUntilStdinEnds(t *testing.T) {
	t.Parallel()
	stdinR, stdinW := io.Pipe()
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- RunProcess(context.Background(), []string{"-reply-per-write", "-max-locks", "-1", "-exit-on-eof"}, stdinR, stdoutW)
	}()
	line, err := bufio.NewReader(stdoutR).ReadString('\n')
	require.NoError(t, err)
	c := dialRaw(t, strings.TrimSpace(line))
	c.ping()
	c.lock("k", "0", 33)
	require.NoError(t, stdinW.Close())
	require.NoError(t, <-done)
	c.expectEOF(ioWait)
}

func TestRunProcessStopsWhenItsContextEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- RunProcess(ctx, nil, strings.NewReader(""), stdoutW) }()
	line, err := bufio.NewReader(stdoutR).ReadString('\n')
	require.NoError(t, err)
	c := dialRaw(t, strings.TrimSpace(line))
	c.ping()
	cancel()
	require.NoError(t, <-done)
	c.expectEOF(ioWait)
}

func TestRunProcessRejectsBadFlags(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-version", "3"},
		{"-max-locks", "0"},
		{"-latency", "-1ms"},
		{"-latency", "2s"},
		{"-nope"},
		{"extra"},
	} {
		err := RunProcess(context.Background(), args, strings.NewReader(""), io.Discard)
		assert.ErrorContains(t, err, "testutil: ", "%q", args)
	}
}

// -h writes the flag list to stderr and returns flag.ErrHelp (a main exits
// 0 on it); a bad flag writes it too and returns the error, which names the
// flag. RunProcess writes no usage.
func TestRunProcessUsage(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"-h"}, {"-help"}, {"-nope"}, {"-version", "3"}, {"extra"}} {
		var stdout, stderr bytes.Buffer
		err := RunProcessWithStderr(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
		require.Error(t, err, "%q", args)
		assert.Equal(t, args[0] == "-h" || args[0] == "-help", errors.Is(err, flag.ErrHelp), "%q: %v", args, err)
		assert.Empty(t, stdout.String(), "%q", args)
		assert.True(t, strings.HasPrefix(stderr.String(), "Usage: dflockd-test [flags]\n"), "%q: %q", args, stderr.String())
		for _, f := range []string{"-addr", "-version", "-reply-per-write", "-max-locks", "-exit-on-eof", "-latency"} {
			assert.Regexp(t, "(?m)^  "+f+"( |$)", stderr.String(), "%q", args)
		}
		assert.NotContains(t, stderr.String(), err.Error(), "%q: the caller prints the error", args)
	}
	err := RunProcess(context.Background(), []string{"-h"}, strings.NewReader(""), io.Discard)
	assert.ErrorIs(t, err, flag.ErrHelp)
}

// With -latency the announced address is a Proxy's that delays each way.
func TestRunProcessServesThroughLatency(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() { done <- RunProcess(ctx, []string{"-latency", "20ms"}, strings.NewReader(""), stdoutW) }()
	line, err := bufio.NewReader(stdoutR).ReadString('\n')
	require.NoError(t, err)
	c := dialRaw(t, strings.TrimSpace(line))
	start := time.Now()
	c.ping()
	assert.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond, "a round trip through 20 ms each way")
	cancel()
	require.NoError(t, <-done)
}

// With -addr and -latency the Proxy listens on -addr (and the Server behind
// it on a random port): a client that connects to -addr gets the latency.
func TestRunProcessLatencyProxyListensOnAddr(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	ctx, cancel := context.WithCancel(context.Background())
	stdoutR, stdoutW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- RunProcess(ctx, []string{"-addr", addr, "-latency", "20ms"}, strings.NewReader(""), stdoutW)
	}()
	line, err := bufio.NewReader(stdoutR).ReadString('\n')
	require.NoError(t, err)
	assert.Equal(t, addr, strings.TrimSpace(line), "the announced address is -addr")
	c := dialRaw(t, addr)
	start := time.Now()
	c.ping()
	assert.GreaterOrEqual(t, time.Since(start), 40*time.Millisecond, "-addr serves through the 20 ms proxy")
	cancel()
	require.NoError(t, <-done)
}
