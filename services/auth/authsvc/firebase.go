package authsvc

import (
	"context"
	"fmt"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/auth"
	"google.golang.org/api/option"

	"github.com/switchboard-rt/switchboard/pkg/api"
)

// firebaseVerifier checks Firebase ID tokens with the Admin SDK.
type firebaseVerifier struct {
	client  *auth.Client
	claims  claimPicker
	revoked *revocationCache // nil unless check_revoked
}

func newFirebaseVerifier(ctx context.Context, c FirebaseConfig, claims claimPicker) (*firebaseVerifier, error) {
	var opts []option.ClientOption
	switch {
	case c.CredentialsFile != "":
		opts = append(opts, option.WithAuthCredentialsFile(option.ServiceAccount, c.CredentialsFile))
	case !c.CheckRevoked:
		// Verifying ID tokens needs only Google's public keys; without
		// credentials the SDK does not probe for ambient ones at start.
		// Looking users up (check_revoked) needs credentials: then the
		// environment's default ones are used.
		opts = append(opts, option.WithoutAuthentication())
	}
	app, err := firebase.NewApp(ctx, &firebase.Config{ProjectID: c.ProjectID}, opts...)
	if err != nil {
		return nil, fmt.Errorf("firebase app: %w", err)
	}
	client, err := app.Auth(ctx)
	if err != nil {
		return nil, fmt.Errorf("firebase auth client: %w", err)
	}
	v := &firebaseVerifier{client: client, claims: claims}
	if c.CheckRevoked {
		v.revoked = newRevocationCache(c.RevocationCacheSize, c.RevocationCacheTTL)
	}
	return v, nil
}

// Verify checks an ID token: signature (Google's keys), project (aud/iss),
// subject and times; with check_revoked also that the user is enabled and
// the token not revoked.
func (v *firebaseVerifier) Verify(ctx context.Context, token string) (api.VerifyReply, error) {
	if err := precheck(token); err != nil {
		return api.VerifyReply{}, err
	}
	tok, err := v.client.VerifyIDToken(ctx, token)
	if err != nil {
		return api.VerifyReply{}, firebaseError(err)
	}
	if v.revoked != nil {
		if err := v.checkRevoked(ctx, token, tok); err != nil {
			return api.VerifyReply{}, err
		}
	}
	name, _ := tok.Claims["name"].(string)
	claims, err := v.claims.pick(tok.Claims)
	if err != nil {
		return api.VerifyReply{}, err
	}
	return identity(tok.UID, name, time.Unix(tok.Expires, 0), claims)
}

// checkRevoked asks Firebase about the user behind tok unless the cache
// already knows the answer for a token issued then.
func (v *firebaseVerifier) checkRevoked(ctx context.Context, token string, tok *auth.Token) error {
	now := time.Now()
	switch v.revoked.get(tok.UID, tok.IssuedAt, now) {
	case revocationOK:
		return nil
	case revocationRefused:
		return reject("revoked or disabled")
	}
	_, err := v.client.VerifyIDTokenAndCheckRevoked(ctx, token)
	switch {
	case err == nil:
		v.revoked.put(tok.UID, revocationEntry{okAt: tok.IssuedAt}, now)
	case auth.IsIDTokenRevoked(err):
		v.revoked.put(tok.UID, revocationEntry{refusedUpTo: tok.IssuedAt}, now)
	case auth.IsUserDisabled(err):
		v.revoked.put(tok.UID, revocationEntry{disabled: true}, now)
	}
	if err != nil {
		return firebaseError(err)
	}
	return nil
}

// firebaseError turns an SDK error into a refusal, or an internal fault
// when it is not the token's (keys or users cannot be fetched). The SDK's
// messages name claims and URLs, never the token itself.
func firebaseError(err error) error {
	switch {
	case auth.IsIDTokenExpired(err):
		return reject("expired")
	case auth.IsIDTokenRevoked(err):
		return reject("revoked")
	case auth.IsUserDisabled(err):
		return reject("user disabled")
	case auth.IsIDTokenInvalid(err):
		return reject("invalid")
	case auth.IsUserNotFound(err):
		return reject("unknown user")
	}
	return fmt.Errorf("firebase verify: %w", err)
}
