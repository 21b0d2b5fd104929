package main

import (
	"reflect"
	"strings"
	"testing"
)

// TestParseIndexFields checks that _id always comes first, duplicates go, and
// anything that would need quoting in SQL is refused.
func TestParseIndexFields(t *testing.T) {
	got, err := parseIndexFields(" recipient_id,user_id,,_id,recipient_id ")
	if err != nil {
		t.Fatal(err)
	}

	if want := []string{"_id", "recipient_id", "user_id"}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}

	for _, bad := range []string{"a.b", "$where", "it's", "a b", "1x"} {
		if _, err := parseIndexFields(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestDefaultIndexFields checks the fields indexed when -index-fields is not given.
func TestDefaultIndexFields(t *testing.T) {
	got, err := parseIndexFields(strings.Join(defaultIndexFields, ","))
	if err != nil {
		t.Fatal(err)
	}

	want := []string{
		"_id", "recipient_id", "user_id", "email_key", "username_key", "dispatch_id",
		"unread_by", "broadcast_page", "search_keys", "notification_id", "created_day", "log_page", "fold_slot",
		"inbox_page", "actor_id", "action", "target_id", "key_hash",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

// TestPgIndexName checks PostgreSQL's 63-byte limit and that long names stay distinct.
func TestPgIndexName(t *testing.T) {
	if got := pgIndexName("notifications_f352e36f", "recipient_id"); got != "notifications_f352e36f_tdg_recipient_id" {
		t.Errorf("short name: got %q", got)
	}

	long := strings.Repeat("é", 25) + "_f352e36f" // 59 bytes
	a, b := pgIndexName(long, "recipient_id"), pgIndexName(long, "dispatch_id")

	for _, n := range []string{a, b} {
		if len(n) > pgMaxIdentifier || !strings.Contains(n, "_tdg_") {
			t.Errorf("long name %q: %d bytes", n, len(n))
		}
	}

	if a == b {
		t.Errorf("two fields share the name %q", a)
	}
}
