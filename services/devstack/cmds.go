package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/switchboard-rt/switchboard/pkg/client"
	"github.com/switchboard-rt/switchboard/pkg/config"
	"github.com/switchboard-rt/switchboard/services/auth/authsvc"
	"github.com/switchboard-rt/switchboard/services/devstack/devstack"
)

const defaultNATSURL = "nats://127.0.0.1:4222"

// parseInterspersed parses flags that may stand before and after the
// positional arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// cmdToken implements `devstack token <uid> [-ttl 24h] [-secret S]`: it
// prints a token that the development stack accepts for uid, or, with
// -secret, one for an auth service configured with that JWT secret.
func cmdToken(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("devstack token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ttl := fs.Duration("ttl", 24*time.Hour, "lifetime of the token")
	secret := fs.String("secret", "", "HS256 secret of the auth service (default: the development stack's)")
	claims := claimFlags{}
	fs.Var(claims, "claim", "an extra claim name=value, repeatable (a JSON value, else a string): -claim role=admin -claim max_conns=5")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: devstack token <uid> [-ttl 24h] [-secret S] [-claim name=value ...]")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) != 1 || pos[0] == "" {
		fs.Usage()
		return 2
	}
	if *ttl <= 0 {
		fmt.Fprintln(stderr, "devstack token: -ttl must be positive")
		return 2
	}
	var tok string
	if *secret != "" {
		tok, err = authsvc.MintTokenWith(*secret, "", "", pos[0], *ttl, claims)
	} else {
		tok, err = devstack.MintToken(pos[0], *ttl, claims)
	}
	if err != nil {
		fmt.Fprintln(stderr, "devstack token:", err)
		return 1
	}
	if _, err := fmt.Fprintln(stdout, tok); err != nil {
		return 1
	}
	return 0
}

// appInbox is the inbox prefix of backend services (the `app` user of the
// shipped NATS configuration).
const appInbox = "_INBOX_app"

// notifyArgs is a parsed `devstack notify` command line.
type notifyArgs struct {
	url, user, device, conn, event string
	all, ack                       bool
	payload                        json.RawMessage // nil: event without arguments
	timeout                        time.Duration
}

func parseNotify(args []string, envURL string, stderr io.Writer) (notifyArgs, error) {
	var n notifyArgs
	if envURL == "" {
		envURL = defaultNATSURL
	}
	fs := flag.NewFlagSet("devstack notify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&n.url, "nats", envURL, "NATS URL (default from SB_NATS_URL)")
	fs.StringVar(&n.user, "user", "", "deliver to every connection of this user")
	fs.StringVar(&n.device, "device", "", "with -user: only to this device of the user")
	fs.StringVar(&n.conn, "conn", "", "deliver to this socket id")
	fs.BoolVar(&n.all, "all", false, "deliver to every connection")
	fs.BoolVar(&n.ack, "ack", false, "with -conn: wait for the client's ack and print its arguments")
	fs.StringVar(&n.event, "event", "", "event name (required)")
	fs.DurationVar(&n.timeout, "timeout", 5*time.Second, "connect and flush timeout")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: devstack notify [-nats URL] (-user U [-device D] | -conn SID | -all) -event E ['JSON']")
		fs.PrintDefaults()
	}
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return n, err
	}
	targets := 0
	for _, set := range []bool{n.user != "", n.conn != "", n.all} {
		if set {
			targets++
		}
	}
	switch {
	case targets != 1:
		return n, errors.New("give exactly one of -user, -conn, -all")
	case n.device != "" && n.user == "":
		return n, errors.New("-device needs -user")
	case n.ack && n.conn == "":
		return n, errors.New("-ack needs -conn")
	case n.event == "":
		return n, errors.New("-event is required")
	case len(pos) > 1:
		return n, errors.New("give the payload as one argument (quote it)")
	case n.timeout <= 0:
		return n, errors.New("-timeout must be positive")
	}
	if len(pos) == 1 {
		if !json.Valid([]byte(pos[0])) {
			return n, fmt.Errorf("payload %q is not JSON (a string needs quotes: '\"hello\"')", pos[0])
		}
		n.payload = json.RawMessage(pos[0])
	}
	return n, nil
}

// cmdNotify implements `devstack notify`: it delivers one event through
// NATS with the Go client library, as any backend service would.
func cmdNotify(args []string, envURL string, stdout, stderr io.Writer) int {
	n, err := parseNotify(args, envURL, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "devstack notify:", err)
		return 2
	}
	if err := notify(n, stdout); err != nil {
		fmt.Fprintln(stderr, "devstack notify:", err)
		return 1
	}
	return 0
}

func notify(n notifyArgs, stdout io.Writer) error {
	// Replies (acks) come to the inboxes of backend services' user.
	nc, err := nats.Connect(n.url, nats.Name("devstack-notify"), nats.Timeout(n.timeout), nats.CustomInboxPrefix(appInbox))
	if err != nil {
		return fmt.Errorf("connect %s: %w", config.RedactURL(n.url), err)
	}
	defer nc.Close()
	c := client.New(nc)
	var payload any
	if n.payload != nil {
		payload = n.payload
	}
	switch {
	case n.ack:
		ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
		defer cancel()
		args, aerr := c.EmitWithAck(ctx, n.conn, n.event, payload)
		if aerr != nil {
			return fmt.Errorf("ack: %w", aerr)
		}
		out, _ := json.Marshal(args)
		_, err = fmt.Fprintf(stdout, "ack %s\n", out)
		return err
	case n.all:
		err = c.Broadcast(n.event, payload)
	case n.conn != "":
		err = c.NotifyConn(n.conn, n.event, payload)
	case n.device != "":
		err = c.NotifyDevice(n.user, n.device, n.event, payload)
	default:
		err = c.NotifyUser(n.user, n.event, payload)
	}
	if err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if err := nc.FlushTimeout(n.timeout); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	return nil
}

// claimFlags collects -claim name=value flags; a value that is JSON is
// taken as such (5, true, ["a"]), any other as a string.
type claimFlags map[string]any

func (c claimFlags) String() string { return "" }

func (c claimFlags) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return errors.New("want name=value")
	}
	var j any
	if err := json.Unmarshal([]byte(val), &j); err == nil {
		c[name] = j
	} else {
		c[name] = val
	}
	return nil
}
