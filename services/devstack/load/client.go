package load

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// EventFunc receives a server event: its name, its first argument (raw
// JSON, nil without one) and when the frame was read.
type EventFunc func(name string, arg []byte, at time.Time)

// Client is one Socket.IO v5 connection over a raw WebSocket (Engine.IO
// v4, no polling), in the default namespace.
type Client struct {
	ws  *websocket.Conn
	SID string

	wmu sync.Mutex // one writer at a time

	done chan struct{}
	err  error // why the read loop ended, after done
}

// DialOptions says how to connect.
type DialOptions struct {
	Token    string // sent in the CONNECT auth payload
	DeviceID string // handshake query deviceId ("" for none)
	OnEvent  EventFunc
	Timeout  time.Duration // of the whole handshake (default 10 s)
}

// wsURL turns a server URL (http, https, ws or wss, with or without a path)
// into the Engine.IO WebSocket endpoint.
func wsURL(server, deviceID string) (string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", fmt.Errorf("server url: %w", err)
	}
	switch u.Scheme {
	case "http", "ws":
		u.Scheme = "ws"
	case "https", "wss":
		u.Scheme = "wss"
	default:
		return "", fmt.Errorf("server url %q: want http(s) or ws(s)", server)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/socket.io/"
	}
	q := u.Query()
	q.Set("EIO", "4")
	q.Set("transport", "websocket")
	if deviceID != "" {
		q.Set("deviceId", deviceID)
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// ConnectError is a CONNECT refused by the server (a `44` packet).
type ConnectError struct{ Message string }

func (e *ConnectError) Error() string { return "connect refused: " + e.Message }

// Dial opens a connection and completes the Socket.IO CONNECT.
func Dial(ctx context.Context, server string, o DialOptions) (*Client, error) {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	target, err := wsURL(server, o.DeviceID)
	if err != nil {
		return nil, err
	}
	d := websocket.Dialer{HandshakeTimeout: o.Timeout, ReadBufferSize: 1024, WriteBufferSize: 1024}
	ws, resp, err := d.DialContext(ctx, target, nil)
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	deadline, _ := ctx.Deadline()
	_ = ws.SetReadDeadline(deadline)
	c := &Client{ws: ws, done: make(chan struct{})}
	if err := c.handshake(o.Token); err != nil {
		_ = ws.Close()
		return nil, err
	}
	_ = ws.SetReadDeadline(time.Time{})
	go c.readLoop(o.OnEvent)
	return c, nil
}

func (c *Client) handshake(token string) error {
	_, open, err := c.ws.ReadMessage()
	if err != nil {
		return fmt.Errorf("read open: %w", err)
	}
	if len(open) == 0 || open[0] != '0' {
		return fmt.Errorf("want an Engine.IO open packet, got %.40q", open)
	}
	auth, _ := json.Marshal(map[string]string{"token": token})
	if err := c.write(append([]byte("40"), auth...)); err != nil {
		return fmt.Errorf("send connect: %w", err)
	}
	for {
		_, f, err := c.ws.ReadMessage()
		if err != nil {
			return fmt.Errorf("read connect reply: %w", err)
		}
		switch {
		case bytes.Equal(f, []byte("2")):
			if err := c.write([]byte("3")); err != nil {
				return fmt.Errorf("pong: %w", err)
			}
		case bytes.HasPrefix(f, []byte("40")):
			var ok struct {
				SID string `json:"sid"`
			}
			if err := json.Unmarshal(f[2:], &ok); err != nil || ok.SID == "" {
				return fmt.Errorf("bad connect reply %.60q", f)
			}
			c.SID = ok.SID
			return nil
		case bytes.HasPrefix(f, []byte("44")):
			var e struct {
				Message string `json:"message"`
			}
			_ = json.Unmarshal(f[2:], &e)
			return &ConnectError{Message: e.Message}
		}
		// Anything else before the CONNECT reply (events) is dropped.
	}
}

func (c *Client) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.ws.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.ws.WriteMessage(websocket.TextMessage, b)
}

// readLoop answers pings and hands events to on until the connection
// ends.
func (c *Client) readLoop(on EventFunc) {
	defer close(c.done)
	for {
		_, f, err := c.ws.ReadMessage()
		if err != nil {
			c.err = err
			return
		}
		at := time.Now()
		switch {
		case len(f) == 1 && f[0] == '2':
			if err := c.write([]byte("3")); err != nil {
				c.err = err
				return
			}
		case bytes.HasPrefix(f, []byte("42")):
			if name, arg, ok := splitEvent(f[2:]); ok && on != nil {
				on(name, arg, at)
			}
		case bytes.HasPrefix(f, []byte("41")), len(f) == 1 && f[0] == '1':
			c.err = errors.New("disconnected by the server")
			return
		}
	}
}

// splitEvent splits `["name",arg,...]` into the name and the first
// argument, without decoding the argument.
func splitEvent(b []byte) (string, []byte, bool) {
	if len(b) < 4 || b[0] != '[' || b[1] != '"' {
		return "", nil, false
	}
	end := bytes.IndexByte(b[2:], '"')
	if end < 0 {
		return "", nil, false
	}
	name := string(b[2 : 2+end])
	rest := b[2+end+1:]
	if len(rest) > 0 && rest[0] == ']' {
		return name, nil, true
	}
	if len(rest) < 2 || rest[0] != ',' || rest[len(rest)-1] != ']' {
		return "", nil, false
	}
	return name, rest[1 : len(rest)-1], true
}

// Emit sends an event with one argument (raw JSON; nil for none).
func (c *Client) Emit(name string, arg []byte) error {
	return c.write(eventFrame(name, arg))
}

func eventFrame(name string, arg []byte) []byte {
	b := make([]byte, 0, len(name)+len(arg)+8)
	b = append(b, `42["`...)
	b = append(b, name...)
	b = append(b, '"')
	if arg != nil {
		b = append(b, ',')
		b = append(b, arg...)
	}
	return append(b, ']')
}

// Done is closed when the connection ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection (without a Socket.IO DISCONNECT, like a lost
// network, unless graceful).
func (c *Client) Close(graceful bool) {
	if graceful {
		_ = c.write([]byte("41"))
	}
	_ = c.ws.Close()
	<-c.done
}
