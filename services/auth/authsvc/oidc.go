package authsvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// errKeysUnavailable means the key set is not known recently enough to
// judge a token: not the token's fault.
var errKeysUnavailable = errors.New("signing keys unavailable")

// errUnknownKey refuses a token whose key id is not in the set.
var errUnknownKey = errors.New("unknown key id")

// maxDiscoveryBytes bounds the discovery document read at start.
const maxDiscoveryBytes = 1 << 20

// oidcVerifier checks tokens signed with keys of a JSON Web Key Set
// (keyfunc and jwkset fetch, cache and refresh the set; golang-jwt checks
// the token).
type oidcVerifier struct {
	keys  keyfunc.Keyfunc
	store *stampedStorage
	// rotations lets a token with an unknown key id fetch the set again,
	// at most once per refresh_min_interval; it never waits.
	rotations *rate.Limiter
	parser    *jwt.Parser
	uidClaim  string
	claims    claimPicker
	maxAge    time.Duration
}

// newOIDCVerifier resolves the key set's address (discovery when not
// configured) and starts fetching it; the refresh runs until ctx ends. A
// key set that cannot be fetched at start does not stop the service: its
// tokens are answered "unavailable" until a fetch succeeds.
func newOIDCVerifier(ctx context.Context, log *slog.Logger, c OIDCConfig, claims claimPicker, client *http.Client) (*oidcVerifier, error) {
	if client == nil {
		client = &http.Client{Timeout: c.HTTPTimeout}
	}
	jwksURL := c.JWKSURL
	if jwksURL == "" {
		u, err := discoverJWKS(ctx, client, c.Issuer, c.HTTPTimeout)
		if err != nil {
			return nil, err
		}
		jwksURL = u
	}
	store := &stampedStorage{Storage: jwkset.NewMemoryStorage()}
	onError := func(ctx context.Context, err error) {
		store.failed.Store(time.Now().UnixNano())
		log.Warn("fetch signing keys", "url", jwksURL, "err", err)
	}
	remote, err := jwkset.NewStorageFromHTTP(jwksURL, jwkset.HTTPClientStorageOptions{
		Client:                    client,
		Ctx:                       ctx,
		HTTPTimeout:               c.HTTPTimeout,
		NoErrorReturnFirstHTTPReq: true,
		RefreshErrorHandler:       onError,
		RefreshInterval:           c.RefreshInterval,
		Storage:                   store,
	})
	if err != nil {
		return nil, fmt.Errorf("oidc keys: %w", err)
	}
	set, err := jwkset.NewHTTPClient(jwkset.HTTPClientOptions{
		HTTPURLs: map[string]jwkset.Storage{jwksURL: remote},
		// An unknown key id fetches the set again; Verify lets through
		// only the tokens its own limiter allows, so jwkset's never waits.
		RefreshUnknownKID: rate.NewLimiter(rate.Inf, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("oidc keys: %w", err)
	}
	kf, err := keyfunc.New(keyfunc.Options{Ctx: ctx, Storage: set})
	if err != nil {
		return nil, fmt.Errorf("oidc keys: %w", err)
	}
	parser := jwt.NewParser(
		jwt.WithValidMethods(c.Algorithms),
		jwt.WithIssuer(c.Issuer),
		jwt.WithAudience(c.Audience),
		jwt.WithLeeway(c.Leeway),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
	)
	return &oidcVerifier{keys: kf, store: store, rotations: rate.NewLimiter(rate.Every(c.RefreshMinInterval), 1), parser: parser, uidClaim: c.UIDClaim, claims: claims, maxAge: c.KeysMaxAge}, nil
}

// Verify checks token's signature with the key its "kid" names, then its
// issuer, audience and times.
func (v *oidcVerifier) Verify(ctx context.Context, token string) (api.VerifyReply, error) {
	if err := precheck(token); err != nil {
		return api.VerifyReply{}, err
	}
	keyOf := v.keys.KeyfuncCtx(ctx)
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if kid, ok := t.Header["kid"].(string); ok && !v.known(ctx, kid) && !v.rotations.Allow() {
			// Fetched again lately: judged on the keys at hand.
			if !v.fresh() || v.store.lastFailed() {
				return nil, errKeysUnavailable
			}
			return nil, errUnknownKey
		}
		k, err := keyOf(t) // an unknown key id fetches the set again
		switch {
		case !v.fresh():
			return nil, errKeysUnavailable
		case err != nil && v.store.lastFailed():
			return nil, errKeysUnavailable // maybe a rotation we could not fetch
		}
		return k, err
	})
	switch {
	case errors.Is(err, errKeysUnavailable):
		return api.VerifyReply{}, fmt.Errorf("oidc verify: %w", errKeysUnavailable)
	case err != nil:
		return api.VerifyReply{}, reject(jwtReason(err))
	}
	return mapIdentity(claims, v.uidClaim, v.claims)
}

// known reports whether the keys at hand hold kid.
func (v *oidcVerifier) known(ctx context.Context, kid string) bool {
	_, err := v.store.Storage.KeyRead(ctx, kid)
	return err == nil
}

// fresh reports whether the keys were fetched within keys_max_age.
func (v *oidcVerifier) fresh() bool {
	last := v.store.fetched.Load()
	return last != 0 && time.Since(time.Unix(0, last)) < v.maxAge
}

// stampedStorage is the key set's storage: it records when the set was
// last replaced by a successful fetch, and when a fetch last failed.
type stampedStorage struct {
	jwkset.Storage
	fetched atomic.Int64 // unix ns of the last successful fetch
	failed  atomic.Int64 // unix ns of the last failed fetch
}

// KeyReplaceAll is called by jwkset after each successful fetch.
func (s *stampedStorage) KeyReplaceAll(ctx context.Context, given []jwkset.JWK) error {
	if err := s.Storage.KeyReplaceAll(ctx, given); err != nil {
		return err
	}
	s.fetched.Store(time.Now().UnixNano())
	return nil
}

// lastFailed reports whether the last fetch failed.
func (s *stampedStorage) lastFailed() bool { return s.failed.Load() > s.fetched.Load() }

// discoverJWKS reads jwks_uri from the issuer's discovery document, which
// must name the same issuer.
func discoverJWKS(ctx context.Context, client *http.Client, issuer string, timeout time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	u := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return "", fmt.Errorf("oidc discovery: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("oidc discovery: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("oidc discovery: %s answered %s", u, resp.Status)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxDiscoveryBytes)).Decode(&doc); err != nil {
		return "", fmt.Errorf("oidc discovery: %s: %w", u, err)
	}
	if doc.Issuer != issuer {
		return "", fmt.Errorf("oidc discovery: the document names issuer %q, not %q", doc.Issuer, issuer)
	}
	if err := checkURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("oidc discovery: jwks_uri %w", err)
	}
	return doc.JWKSURI, nil
}

// isLoopback reports whether host names this machine.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
