package socketio

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// The Socket.IO examples here are the text after the Engine.IO message type
// "4": the gateway hands the Socket.IO decoder "0/admin," for the frame
// "40/admin,".

func TestDecodeProtocolExamples(t *testing.T) {
	tests := []struct {
		in        string
		want      Packet
		canonical bool // Encode(Decode(in)) == in
	}{
		{"0", Packet{Type: Connect, Namespace: "/"}, true},
		{`0{"token":"123"}`, Packet{Type: Connect, Namespace: "/", Data: json.RawMessage(`{"token":"123"}`)}, true},
		{"0/admin,", Packet{Type: Connect, Namespace: "/admin"}, true},
		{"0/admin", Packet{Type: Connect, Namespace: "/admin"}, false},
		{`0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}`, Packet{Type: Connect, Namespace: "/admin", Data: json.RawMessage(`{"sid":"oSO0OpakMV_3jnilAAAA"}`)}, true},
		{"1", Packet{Type: Disconnect, Namespace: "/"}, true},
		{"1/admin,", Packet{Type: Disconnect, Namespace: "/admin"}, true},
		{`2["hello",1]`, Packet{Type: Event, Namespace: "/", Data: json.RawMessage(`["hello",1]`)}, true},
		{`2/admin,456["project:delete",123]`, Packet{Type: Event, Namespace: "/admin", HasID: true, ID: 456, Data: json.RawMessage(`["project:delete",123]`)}, true},
		{`212["x"]`, Packet{Type: Event, Namespace: "/", HasID: true, ID: 12, Data: json.RawMessage(`["x"]`)}, true},
		{`20["x"]`, Packet{Type: Event, Namespace: "/", HasID: true, ID: 0, Data: json.RawMessage(`["x"]`)}, true},
		{`3/admin,456[]`, Packet{Type: Ack, Namespace: "/admin", HasID: true, ID: 456, Data: json.RawMessage(`[]`)}, true},
		{`31["ok",{"a":1}]`, Packet{Type: Ack, Namespace: "/", HasID: true, ID: 1, Data: json.RawMessage(`["ok",{"a":1}]`)}, true},
		{`4{"message":"Not authorized"}`, Packet{Type: ConnectError, Namespace: "/", Data: json.RawMessage(`{"message":"Not authorized"}`)}, true},
		{`4"Not authorized"`, Packet{Type: ConnectError, Namespace: "/", Data: json.RawMessage(`"Not authorized"`)}, true},
		{`4/nsp,{"message":"Invalid namespace"}`, Packet{Type: ConnectError, Namespace: "/nsp", Data: json.RawMessage(`{"message":"Invalid namespace"}`)}, true},
		{`51-["hello",{"_placeholder":true,"num":0}]`, Packet{Type: BinaryEvent, Namespace: "/", Attachments: 1, Data: json.RawMessage(`["hello",{"_placeholder":true,"num":0}]`)}, true},
		{`61-/admin,456[{"_placeholder":true,"num":0}]`, Packet{Type: BinaryAck, Namespace: "/admin", Attachments: 1, HasID: true, ID: 456, Data: json.RawMessage(`[{"_placeholder":true,"num":0}]`)}, true},
		{`50-["x"]`, Packet{Type: BinaryEvent, Namespace: "/", Data: json.RawMessage(`["x"]`)}, true},
		{`2/,["x"]`, Packet{Type: Event, Namespace: "/", Data: json.RawMessage(`["x"]`)}, false},
		{`2 ["x"]`, Packet{Type: Event, Namespace: "/", Data: json.RawMessage(` ["x"]`)}, true},
		{`2999999999999999["x"]`, Packet{Type: Event, Namespace: "/", HasID: true, ID: 999999999999999, Data: json.RawMessage(`["x"]`)}, true},
		{`2["ünï 🙂"]`, Packet{Type: Event, Namespace: "/", Data: json.RawMessage(`["ünï 🙂"]`)}, true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			p, err := Decode([]byte(tt.in))
			if err != nil {
				t.Fatalf("Decode(%q): %v", tt.in, err)
			}
			if !samePacket(p, tt.want) {
				t.Errorf("Decode(%q) = %+v, want %+v", tt.in, p, tt.want)
			}
			enc := p.Encode()
			if tt.canonical && string(enc) != tt.in {
				t.Errorf("Encode = %q, want %q", enc, tt.in)
			}
			again, err := Decode(enc)
			if err != nil || !samePacket(again, p) {
				t.Errorf("Decode(Encode) = %+v, %v; want %+v", again, err, p)
			}
			if tt.want.Type.IsBinary() != p.Type.IsBinary() {
				t.Errorf("IsBinary mismatch")
			}
		})
	}
}

func TestEncodeBuiltPackets(t *testing.T) {
	tests := []struct {
		p    Packet
		want string
	}{
		{Packet{Type: Connect, Data: json.RawMessage(`{"sid":"abc"}`)}, `0{"sid":"abc"}`},
		{Packet{Type: Connect, Namespace: "/admin", Data: json.RawMessage(`{"sid":"abc"}`)}, `0/admin,{"sid":"abc"}`},
		{Packet{Type: ConnectError, Data: json.RawMessage(`{"message":"Token not provided"}`)}, `4{"message":"Token not provided"}`},
		{Packet{Type: Disconnect}, `1`},
		{Packet{Type: Event, Data: EventPayload("tick", json.RawMessage(`{"timer":3}`))}, `2["tick",{"timer":3}]`},
		{Packet{Type: Event, HasID: true, ID: 7, Data: EventPayload("ping")}, `27["ping"]`},
		{Packet{Type: Ack, HasID: true, ID: 0, Data: ArrayPayload(json.RawMessage(`{"status":"ok"}`))}, `30[{"status":"ok"}]`},
		{Packet{Type: Ack, Namespace: "/a", HasID: true, ID: 5, Data: ArrayPayload()}, `3/a,5[]`},
		{Packet{Type: BinaryEvent, Attachments: 2, Data: json.RawMessage(`["x"]`)}, `52-["x"]`},
	}
	for _, tt := range tests {
		if got := string(tt.p.Encode()); got != tt.want {
			t.Errorf("Encode(%+v) = %q, want %q", tt.p, got, tt.want)
		}
		if got := string(tt.p.Append([]byte("4"))); got != "4"+tt.want {
			t.Errorf("Append = %q, want %q", got, "4"+tt.want)
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	tests := map[string]string{
		"empty":                    "",
		"unknown type":             "9",
		"unknown type letter":      "x",
		"event object":             `2{}`,
		"event without name":       `2[]`,
		"event name number":        `2[1]`,
		"event name null":          `2[null]`,
		"event name object":        `2[{"a":1}]`,
		"event no payload":         `2`,
		"event garbage id":         `2abc["x"]`,
		"event truncated":          `2["x"`,
		"event trailing garbage":   `2["x"]]`,
		"event string":             `2"x"`,
		"event ns no payload":      `2/admin,`,
		"event ns no comma":        `2/admin["x"]`,
		"ack without id":           `3[]`,
		"ack garbage":              `3abc[]`,
		"ack object":               `31{}`,
		"ack no payload":           `31`,
		"connect array":            `0[]`,
		"connect string":           `0"x"`,
		"connect with id":          `01{}`,
		"connect garbage":          `0abc`,
		"disconnect payload":       `1{}`,
		"disconnect id":            `11`,
		"connect error empty":      `4`,
		"connect error array":      `4[]`,
		"connect error number":     `41`,
		"connect error id":         `41{"message":"x"}`,
		"binary no count":          `5-["x"]`,
		"binary bad count":         `5x-["x"]`,
		"binary no dash":           `51["x"]`,
		"binary count only":        `51`,
		"binary count 3 digits":    `5100-["x"]`,
		"binary too many":          `565-["x"]`,
		"binary ack no id":         `61-[]`,
		"binary event no name":     `51-[]`,
		"namespace too long":       `2/` + strings.Repeat("n", MaxNamespaceLen) + `,["x"]`,
		"namespace too long alone": `0/` + strings.Repeat("n", MaxNamespaceLen),
		"ack id 16 digits":         `31234567890123456[]`,
		"event id 20 digits":       `212345678901234567890["x"]`,
		"invalid utf8 json":        "2[\"\xff\"]",
		"only whitespace":          "2 ",
	}
	for name, in := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := Decode([]byte(in))
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Decode(%q) = %+v, %v; want ErrInvalid", in, p, err)
			}
		})
	}
}

func TestDecodeLimits(t *testing.T) {
	ns := "/" + strings.Repeat("n", MaxNamespaceLen-1)
	p, err := Decode([]byte("0" + ns + ","))
	if err != nil || p.Namespace != ns {
		t.Errorf("namespace of %d bytes: %v", MaxNamespaceLen, err)
	}
	p, err = Decode([]byte(`564-["x"]`))
	if err != nil || p.Attachments != MaxAttachments {
		t.Errorf("%d attachments: %+v, %v", MaxAttachments, p, err)
	}
}

func TestEventAndArgs(t *testing.T) {
	p, err := Decode([]byte(`2["chat",{"text":"hi"},2,"x",null]`))
	if err != nil {
		t.Fatal(err)
	}
	name, args, err := p.Event()
	if err != nil || name != "chat" {
		t.Fatalf("Event() = %q, %v", name, err)
	}
	want := []string{`{"text":"hi"}`, `2`, `"x"`, `null`}
	if len(args) != len(want) {
		t.Fatalf("args = %q", args)
	}
	for i := range want {
		if string(args[i]) != want[i] {
			t.Errorf("arg %d = %s, want %s", i, args[i], want[i])
		}
	}
	if n, err := p.EventName(); err != nil || n != "chat" {
		t.Errorf("EventName() = %q, %v", n, err)
	}
	all, err := p.Args()
	if err != nil || len(all) != 5 || string(all[0]) != `"chat"` {
		t.Errorf("Args() = %q, %v", all, err)
	}

	p, _ = Decode([]byte(`2["only"]`))
	if name, args, err := p.Event(); err != nil || name != "only" || len(args) != 0 {
		t.Errorf("Event() without args = %q, %q, %v", name, args, err)
	}
	p, _ = Decode([]byte(`2["a\"b\u00fc"]`))
	if name, _ := p.EventName(); name != `a"bü` {
		t.Errorf("escaped event name = %q", name)
	}

	ack, _ := Decode([]byte(`31["ok",1]`))
	if args, err := ack.Args(); err != nil || len(args) != 2 {
		t.Errorf("ack Args() = %q, %v", args, err)
	}
	if args, err := (Packet{Type: Ack, HasID: true}).Args(); !errors.Is(err, ErrInvalid) {
		t.Errorf("Args() of no payload = %q, %v; want ErrInvalid", args, err)
	}
	for _, data := range []string{`{}`, `[]`, `[1]`, `["x"`, ``} {
		if _, _, err := (Packet{Type: Event, Data: json.RawMessage(data)}).Event(); !errors.Is(err, ErrInvalid) {
			t.Errorf("Event() of %q: %v, want ErrInvalid", data, err)
		}
	}
}

func TestPayloadBuilders(t *testing.T) {
	if got := string(EventPayload("a\"b")); got != `["a\"b"]` {
		t.Errorf("EventPayload = %s", got)
	}
	if got := string(EventPayload("x", json.RawMessage(`1`), json.RawMessage(`{"a":[]}`))); got != `["x",1,{"a":[]}]` {
		t.Errorf("EventPayload = %s", got)
	}
	if got := string(ArrayPayload()); got != `[]` {
		t.Errorf("ArrayPayload() = %s", got)
	}
	if got := string(ArrayPayload(json.RawMessage(`"ok"`), json.RawMessage(`2`))); got != `["ok",2]` {
		t.Errorf("ArrayPayload = %s", got)
	}
	p := Packet{Type: Event, Data: EventPayload("<tag>&")}
	back, err := Decode(p.Encode())
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := back.EventName(); n != "<tag>&" {
		t.Errorf("event name round trip = %q", n)
	}
}

func TestReserved(t *testing.T) {
	for _, n := range []string{"connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"} {
		if !Reserved(n) {
			t.Errorf("Reserved(%q) = false", n)
		}
	}
	for _, n := range []string{"", "chat", "Connect", "tick", "exception", "connections"} {
		if Reserved(n) {
			t.Errorf("Reserved(%q) = true", n)
		}
	}
}

func samePacket(a, b Packet) bool {
	return a.Type == b.Type && a.Namespace == b.Namespace && a.HasID == b.HasID && a.ID == b.ID &&
		a.Attachments == b.Attachments && bytes.Equal(a.Data, b.Data) && (a.Data == nil) == (b.Data == nil)
}

func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		"0", `0{"token":"123"}`, "0/admin,", `2["hello",1]`, `2/admin,456["project:delete",123]`,
		`3/admin,456[]`, `4{"message":"Not authorized"}`, `51-["hello",{"_placeholder":true,"num":0}]`,
		`61-/admin,456[{"_placeholder":true,"num":0}]`, `2{}`, `3[]`, `5x-["x"]`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if len(p.Namespace) == 0 || p.Namespace[0] != '/' || len(p.Namespace) > MaxNamespaceLen {
			t.Fatalf("Decode(%q): namespace %q", b, p.Namespace)
		}
		if p.Attachments < 0 || p.Attachments > MaxAttachments || (!p.Type.IsBinary() && p.Attachments != 0) {
			t.Fatalf("Decode(%q): attachments %d", b, p.Attachments)
		}
		switch p.Type {
		case Event, BinaryEvent:
			if _, _, err := p.Event(); err != nil {
				t.Fatalf("Decode(%q) accepted an event Event() rejects: %v", b, err)
			}
		case Ack, BinaryAck:
			if !p.HasID {
				t.Fatalf("Decode(%q) accepted an ack without id", b)
			}
			if _, err := p.Args(); err != nil {
				t.Fatalf("Decode(%q) accepted an ack Args() rejects: %v", b, err)
			}
		}
		enc := p.Encode()
		again, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %q: %v", b, enc, err)
		}
		if !samePacket(p, again) {
			t.Fatalf("round trip of %q via %q: %+v != %+v", b, enc, again, p)
		}
		if enc2 := again.Encode(); !bytes.Equal(enc, enc2) {
			t.Fatalf("Encode not stable: %q then %q", enc, enc2)
		}
	})
}

func BenchmarkSocketIODecodeEvent(b *testing.B) {
	in := []byte(`2/chat,12["message",{"room":"general","text":"hello world","at":1700000000000}]`)
	b.ReportAllocs()
	b.SetBytes(int64(len(in)))
	for b.Loop() {
		p, err := Decode(in)
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := p.Event(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSocketIOEncodeEvent(b *testing.B) {
	arg := json.RawMessage(`{"room":"general","text":"hello world","at":1700000000000}`)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		p := Packet{Type: Event, Namespace: "/chat", Data: EventPayload("message", arg)}
		buf = p.Append(buf[:0])
	}
}
