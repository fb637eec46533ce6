package engineio

import (
	"bytes"
	"encoding/json"
	"errors"
	"runtime"
	"strings"
	"testing"
)

func TestDecodeFrameText(t *testing.T) {
	tests := []struct {
		frame string
		typ   Type
		data  string
	}{
		{"4hello", Message, "hello"},
		{"4", Message, ""},
		{"2", Ping, ""},
		{"3", Pong, ""},
		{"2probe", Ping, "probe"},
		{"3probe", Pong, "probe"},
		{"5", Upgrade, ""},
		{"6", Noop, ""},
		{"1", Close, ""},
		{`0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`, Open,
			`{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`},
		{"42[\"hello\",\"ünï\"]", Message, "2[\"hello\",\"ünï\"]"},
		{"4b", Message, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.frame, func(t *testing.T) {
			p, err := DecodeFrame([]byte(tt.frame), false)
			if err != nil {
				t.Fatalf("DecodeFrame(%q): %v", tt.frame, err)
			}
			if p.Type != tt.typ || string(p.Data) != tt.data || p.Binary {
				t.Errorf("DecodeFrame(%q) = {%v %q %v}, want {%v %q false}", tt.frame, p.Type, p.Data, p.Binary, tt.typ, tt.data)
			}
			if got := string(p.Text()); got != tt.frame {
				t.Errorf("Text() = %q, want %q", got, tt.frame)
			}
		})
	}
}

func TestOpenPacketJSON(t *testing.T) {
	p, err := DecodeFrame([]byte(`0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}`), false)
	if err != nil || p.Type != Open {
		t.Fatalf("decode open: %v %v", p.Type, err)
	}
	var h struct {
		SID          string   `json:"sid"`
		Upgrades     []string `json:"upgrades"`
		PingInterval int      `json:"pingInterval"`
		PingTimeout  int      `json:"pingTimeout"`
		MaxPayload   int      `json:"maxPayload"`
	}
	if err := json.Unmarshal(p.Data, &h); err != nil {
		t.Fatal(err)
	}
	if h.SID != "abc" || h.PingInterval != 25000 || h.PingTimeout != 20000 || h.MaxPayload != 1000000 {
		t.Errorf("open handshake = %+v", h)
	}
}

func TestDecodeFrameBinary(t *testing.T) {
	frame := []byte{1, 2, 3, 4}
	p, err := DecodeFrame(frame, true)
	if err != nil {
		t.Fatal(err)
	}
	if p.Type != Message || !p.Binary || !bytes.Equal(p.Data, frame) {
		t.Errorf("binary frame = %+v", p)
	}
	// A binary frame holding bytes that look like text is still binary.
	p, err = DecodeFrame([]byte("2probe"), true)
	if err != nil || p.Type != Message || !p.Binary || string(p.Data) != "2probe" {
		t.Errorf("binary 2probe = %+v, %v", p, err)
	}
	if got := string(Packet{Type: Message, Binary: true, Data: frame}.AppendText(nil)); got != "bAQIDBA==" {
		t.Errorf("binary text form = %q, want bAQIDBA==", got)
	}
}

func TestDecodeFrameErrors(t *testing.T) {
	for _, frame := range []string{"", "7", "x", "9hello", "/", "b", "bAQIDBA==", "\x1e", " 4"} {
		if p, err := DecodeFrame([]byte(frame), false); !errors.Is(err, ErrInvalid) {
			t.Errorf("DecodeFrame(%q) = %+v, %v; want ErrInvalid", frame, p, err)
		}
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	tests := []struct {
		payload string
		packets []Packet
	}{
		{"4hello\x1e4world\x1ebAQIDBA==", []Packet{
			{Type: Message, Data: []byte("hello")},
			{Type: Message, Data: []byte("world")},
			{Type: Message, Data: []byte{1, 2, 3, 4}, Binary: true},
		}},
		{"2", []Packet{{Type: Ping, Data: []byte{}}}},
		{"6", []Packet{{Type: Noop, Data: []byte{}}}},
		{"1\x1e6", []Packet{{Type: Close, Data: []byte{}}, {Type: Noop, Data: []byte{}}}},
		{"40\x1e42[\"a\"]", []Packet{{Type: Message, Data: []byte("0")}, {Type: Message, Data: []byte(`2["a"]`)}}},
		{"b", []Packet{{Type: Message, Data: []byte{}, Binary: true}}},
		{"bAA==", []Packet{{Type: Message, Data: []byte{0}, Binary: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.payload, func(t *testing.T) {
			got, err := DecodePayload([]byte(tt.payload))
			if err != nil {
				t.Fatalf("DecodePayload(%q): %v", tt.payload, err)
			}
			if !samePackets(got, tt.packets) {
				t.Errorf("DecodePayload(%q) = %+v, want %+v", tt.payload, got, tt.packets)
			}
			if back := string(EncodePayload(tt.packets)); back != tt.payload {
				t.Errorf("EncodePayload = %q, want %q", back, tt.payload)
			}
		})
	}
	if got := EncodePayload(nil); len(got) != 0 {
		t.Errorf("EncodePayload(nil) = %q", got)
	}
}

func TestDecodePayloadErrors(t *testing.T) {
	for _, payload := range []string{
		"", "7", "x", "\x1e", "4a\x1e", "\x1e4a", "4a\x1e\x1e4b", "4a\x1e7", "b!!!", "bAQIDBA", "bAQ=ID", "4a\x1ebA=", "b====",
	} {
		if ps, err := DecodePayload([]byte(payload)); !errors.Is(err, ErrInvalid) {
			t.Errorf("DecodePayload(%q) = %+v, %v; want ErrInvalid", payload, ps, err)
		}
	}
}

func TestTypeString(t *testing.T) {
	want := []string{"open", "close", "ping", "pong", "message", "upgrade", "noop"}
	for i, w := range want {
		if got := Type(i).String(); got != w {
			t.Errorf("Type(%d) = %q, want %q", i, got, w)
		}
	}
	if got := Type(9).String(); got != "type(9)" {
		t.Errorf("Type(9) = %q", got)
	}
}

func samePackets(a, b []Packet) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Type != b[i].Type || a[i].Binary != b[i].Binary || !bytes.Equal(a[i].Data, b[i].Data) {
			return false
		}
	}
	return true
}

func FuzzDecodePayload(f *testing.F) {
	for _, s := range []string{
		"4hello\x1e4world\x1ebAQIDBA==", "2", "3probe", "6", "b", "", "7", "x", "b!!", "4a\x1e\x1e",
		`0{"sid":"x"}`, "42[\"a\"]\x1e41",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ps, err := DecodePayload(body)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if len(ps) == 0 {
			t.Fatalf("DecodePayload(%q): no packets and no error", body)
		}
		enc := EncodePayload(ps)
		again, err := DecodePayload(enc)
		if err != nil {
			t.Fatalf("DecodePayload(EncodePayload(%+v)) = %v", ps, err)
		}
		if !samePackets(ps, again) {
			t.Fatalf("round trip of %q: %+v != %+v", body, again, ps)
		}
		for _, p := range ps {
			if !p.Binary && bytes.IndexByte(p.Data, Separator) >= 0 {
				t.Fatalf("packet data holds the separator: %q", p.Data)
			}
		}
	})
}

func BenchmarkEncodePayload(b *testing.B) {
	ps := []Packet{
		{Type: Message, Data: []byte(`2["chat",{"text":"` + strings.Repeat("x", 100) + `"}]`)},
		{Type: Message, Data: []byte(`2["tick",{"timer":42}]`)},
		{Type: Ping},
		{Type: Message, Data: bytes.Repeat([]byte{0xab}, 64), Binary: true},
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = EncodePayload(ps)
	}
}

func BenchmarkDecodePayload(b *testing.B) {
	body := EncodePayload([]Packet{
		{Type: Message, Data: []byte(`2["chat",{"text":"` + strings.Repeat("x", 100) + `"}]`)},
		{Type: Message, Data: []byte(`2["tick",{"timer":42}]`)},
		{Type: Message, Data: bytes.Repeat([]byte{0xab}, 64), Binary: true},
	})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodePayload(body); err != nil {
			b.Fatal(err)
		}
	}
}

// A payload of many tiny packets is refused past MaxPayloadPackets before
// anything is decoded: 1 MB of NOOPs allocated about 24 MB.
func TestDecodePayloadPacketBound(t *testing.T) {
	at := bytes.Repeat([]byte("6\x1e"), MaxPayloadPackets-1)
	at = append(at, '6')
	if ps, err := DecodePayload(at); err != nil || len(ps) != MaxPayloadPackets {
		t.Fatalf("%d packets: %d, %v", MaxPayloadPackets, len(ps), err)
	}
	over := bytes.Repeat([]byte("6\x1e"), 500000)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := DecodePayload(over)
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("500 000 packets: err = %v", err)
	}
	if a := after.TotalAlloc - before.TotalAlloc; a > 64<<10 {
		t.Fatalf("refusing 1 MB of packets allocated %d KB", a>>10)
	}
}

// A shared packet is encoded once: every Text is the same bytes, without
// an allocation, and equal to the packet's own encoding.
func TestSharedText(t *testing.T) {
	p := Packet{Type: Message, Data: []byte(`2["news",{"n":1}]`)}
	s := p.Shared()
	if !bytes.Equal(s.Text(), p.Text()) {
		t.Fatalf("shared text %q, want %q", s.Text(), p.Text())
	}
	if a, b := s.Text(), s.Text(); &a[0] != &b[0] {
		t.Fatal("shared text encoded again")
	}
	if n := testing.AllocsPerRun(100, func() { _ = s.Text() }); n != 0 {
		t.Fatalf("%v allocations per Text of a shared packet", n)
	}
	b := Packet{Type: Message, Data: []byte{1, 2}, Binary: true}.Shared()
	if got := string(b.AppendText(nil)); got != "bAQI=" {
		t.Fatalf("binary packet text %q", got)
	}
}
