package main

// The indexer adds, next to FerretDB's own tables, the indexes that the SQL FerretDB
// v1.24.2 generates can use; FerretDB's own indexes do not match that SQL
// (docs/scaling.md). It only reads FerretDB's metadata and creates indexes under
// names of its own (`<table>_tdg_...`); FerretDB never lists them, and they go
// away with their table when FerretDB drops a collection or a database.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver (FerretDB uses it too)
)

// defaultIndexFields are the top-level fields tidings' hot queries select by equality
// (notifications by recipient, by unread reader, by broadcast page and by inbox page;
// sessions and receipts by user; users by email and username keys and by search key;
// read receipts by dispatch and by notification; everything by day for retention;
// the log of sends and its tallies by page and fold slot; the audit log by actor,
// action and target; API keys by the SHA-256 of their secret).
var defaultIndexFields = []string{
	"recipient_id", "user_id", "email_key", "username_key", "dispatch_id",
	"unread_by", "broadcast_page", "search_keys", "notification_id", "created_day", "log_page", "fold_slot",
	"inbox_page", "actor_id", "action", "target_id", "key_hash",
}

// fieldName is what -index-fields accepts: a plain top-level field name. FerretDB
// does not push dotted paths or operators down, and a plain name needs no quoting.
var fieldName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

const (
	// pgMaxIdentifier is PostgreSQL's identifier limit (NAMEDATALEN - 1); a longer
	// name would be cut silently and IF NOT EXISTS would then check the wrong name.
	pgMaxIdentifier = 63

	// pgBigTable is the table size (bytes) from which an index is built
	// CONCURRENTLY: a plain build blocks the table's writes while it runs.
	pgBigTable = 16 << 20

	// pgLockTimeout bounds every lock wait of the indexer, so that it gives way to
	// FerretDB (a database drop, say) instead of making FerretDB wait or deadlock.
	pgLockTimeout = "1s"

	// pgBigLockTimeout is the lock wait allowed to a CONCURRENTLY build, which waits
	// for every transaction that started before it.
	pgBigLockTimeout = "10s"

	// sqliteBusyTimeout (ms) is how long the indexer waits for FerretDB's writers.
	sqliteBusyTimeout = 5000
)

// errVanished reports a table that was dropped while it was being indexed.
var errVanished = errors.New("table dropped meanwhile")

// indexBackend is one storage backend's way of adding the indexes that are missing.
type indexBackend interface {
	// pass creates the indexes missing now. Tables that vanish meanwhile (a test
	// dropped its database) are not an error; they are retried by the next pass.
	pass(ctx context.Context) error

	// close releases connections kept between passes.
	close()
}

// parseIndexFields validates -index-fields and puts _id first, so that every
// table gets an index for FerretDB's `{_id: X}` finds whatever the flag says.
func parseIndexFields(s string) ([]string, error) {
	fields := []string{"_id"}

	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch {
		case f == "":
			continue
		case !fieldName.MatchString(f):
			return nil, fmt.Errorf("%q is not a plain top-level field name", f)
		}

		if !slices.Contains(fields, f) {
			fields = append(fields, f)
		}
	}

	return fields, nil
}

// runIndexer runs a pass every interval until ctx is done: tables appear at any
// time (every test creates a database), and a failed pass is simply tried again.
// A new error is logged at warn once, its repeats at debug, so a PostgreSQL that is
// down does not flood the log; nothing here stops FerretDB.
func runIndexer(ctx context.Context, ix indexBackend, interval time.Duration, l *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()

	var lastErr string

	for {
		err := safePass(ctx, ix)

		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if lastErr != "" {
				l.Info("indexer: working again")
				lastErr = ""
			}
		case err.Error() != lastErr:
			l.Warn("indexer: pass failed; retrying every tick", "error", err)
			lastErr = err.Error()
		default:
			l.Debug("indexer: pass failed again", "error", err)
		}

		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// safePass runs one pass and turns a panic into an error: a bug in the indexer
// must not take FerretDB down with it.
func safePass(ctx context.Context, ix indexBackend) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("indexer panic: %v", p)
		}
	}()

	return ix.pass(ctx)
}

// --- PostgreSQL ---------------------------------------------------------------

// pgIndexer creates, for every collection table of every FerretDB database (a
// schema with a `_ferretdb_database_metadata` table), a GIN jsonb_path_ops index on
// `(_jsonb -> 'field')` per field: FerretDB pushes `{field: scalar}` down as
// `_jsonb -> 'field' @> 'value'`, which only such an index serves.
type pgIndexer struct {
	config *pgx.ConnConfig
	fields []string
	l      *slog.Logger

	conn *pgx.Conn

	// done holds the OIDs of tables whose indexes all exist. An OID, not a name:
	// a collection dropped and created again gets the same table name.
	done map[uint32]bool
}

// pgTable is one table found in the catalog.
type pgTable struct {
	OID    uint32
	Schema string
	Name   string
}

// newPostgreSQLIndexer checks the URL now, so that a typo fails at start.
func newPostgreSQLIndexer(rawURL string, fields []string, l *slog.Logger) (*pgIndexer, error) {
	config, err := pgx.ParseConfig(rawURL)
	if err != nil {
		return nil, err
	}

	// pgxpool's settings in FerretDB's URL would reach the server as unknown
	// parameters from a plain connection.
	for k := range config.RuntimeParams {
		if strings.HasPrefix(k, "pool_") {
			delete(config.RuntimeParams, k)
		}
	}

	config.RuntimeParams["application_name"] = "tidings-ferretdb-indexer"
	config.RuntimeParams["lock_timeout"] = pgLockTimeout

	// Not waiting for the WAL flush releases the table's lock sooner. Only an OS
	// crash can lose such a commit, and the launcher, restarted after it, creates
	// the index again.
	config.RuntimeParams["synchronous_commit"] = "off"

	if config.ConnectTimeout == 0 {
		config.ConnectTimeout = 5 * time.Second
	}

	// Every test database has its own schema: do not keep a prepared statement
	// per schema's metadata query.
	config.DefaultQueryExecMode = pgx.QueryExecModeExec

	return &pgIndexer{config: config, fields: fields, l: l, done: map[uint32]bool{}}, nil
}

// close ends the connection kept between passes.
func (x *pgIndexer) close() {
	if x.conn != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()

		_ = x.conn.Close(ctx)
		x.conn = nil
	}
}

// pass connects if needed, then indexes the tables not done yet. A connection
// that failed is dropped, to be opened again by the next pass.
func (x *pgIndexer) pass(ctx context.Context) error {
	if x.conn == nil || x.conn.IsClosed() {
		conn, err := pgx.ConnectConfig(ctx, x.config)
		if err != nil {
			return fmt.Errorf("connecting to PostgreSQL: %w", err)
		}

		x.conn = conn
	}

	err := x.indexAll(ctx)

	var pgErr *pgconn.PgError
	if err != nil && !errors.As(err, &pgErr) {
		x.close()
	}

	return err
}

// indexAll costs one catalog query when no table is new; otherwise it reads the
// metadata of the databases that have new tables and indexes those tables.
func (x *pgIndexer) indexAll(ctx context.Context) error {
	rows, err := x.conn.Query(ctx, `
		SELECT c.oid, n.nspname, c.relname
		FROM pg_catalog.pg_class c
		JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
		WHERE c.relkind = 'r'
		  AND c.relname NOT LIKE '\_ferretdb\_%'
		  AND EXISTS (
		    SELECT 1 FROM pg_catalog.pg_class m
		    WHERE m.relnamespace = c.relnamespace
		      AND m.relname = '_ferretdb_database_metadata' AND m.relkind = 'r')`)
	if err != nil {
		return fmt.Errorf("listing tables: %w", err)
	}

	tables, err := pgx.CollectRows(rows, pgx.RowToStructByPos[pgTable])
	if err != nil {
		return fmt.Errorf("listing tables: %w", err)
	}

	present := make(map[uint32]bool, len(tables))
	todo := map[string][]pgTable{}

	for _, t := range tables {
		present[t.OID] = true

		if !x.done[t.OID] {
			todo[t.Schema] = append(todo[t.Schema], t)
		}
	}

	for oid := range x.done {
		if !present[oid] {
			delete(x.done, oid)
		}
	}

	schemas := make([]string, 0, len(todo))
	for s := range todo {
		schemas = append(schemas, s)
	}

	sort.Strings(schemas)

	var failed []error

	for _, schema := range schemas {
		colls, err := x.collections(ctx, schema)
		if err != nil {
			if x.transient(err) {
				x.l.Debug("indexer: database vanished or busy; next tick", "db", schema, "error", err)
				continue
			}

			failed = append(failed, fmt.Errorf("reading metadata of %q: %w", schema, err))

			continue
		}

		for _, t := range todo[schema] {
			coll, ok := colls[t.Name]
			if !ok {
				// Being created (FerretDB writes the metadata after the table) or not
				// FerretDB's; look again next tick.
				continue
			}

			if err = x.indexTable(ctx, t, coll); err != nil {
				if x.transient(err) {
					x.l.Debug("indexer: table vanished or busy; next tick", "db", schema, "collection", coll, "error", err)
					continue
				}

				failed = append(failed, fmt.Errorf("indexing %s.%s: %w", schema, coll, err))

				continue
			}

			x.done[t.OID] = true
		}
	}

	return errors.Join(failed...)
}

// collections reads FerretDB's metadata of one database: table name -> collection
// name (see internal/backends/postgresql/metadata in FerretDB v1.24.2).
func (x *pgIndexer) collections(ctx context.Context, schema string) (map[string]string, error) {
	q := fmt.Sprintf(
		`SELECT _jsonb->>'_id', _jsonb->>'table' FROM %s`,
		pgx.Identifier{schema, "_ferretdb_database_metadata"}.Sanitize(),
	)

	rows, err := x.conn.Query(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()

	res := map[string]string{}

	for rows.Next() {
		var coll, table *string
		if err = rows.Scan(&coll, &table); err != nil {
			return nil, err
		}

		if coll != nil && table != nil {
			res[*table] = *coll
		}
	}

	return res, rows.Err()
}

// indexTable creates the table's missing indexes. A small table gets them all in
// one transaction (a few milliseconds of blocked writes); a big one gets them
// CONCURRENTLY, one by one, so FerretDB keeps writing meanwhile. An index left
// invalid by a failed CONCURRENTLY build is dropped and built again.
func (x *pgIndexer) indexTable(ctx context.Context, t pgTable, coll string) error {
	rows, err := x.conn.Query(ctx, `
		SELECT ic.relname, ix.indisvalid
		FROM pg_catalog.pg_index ix
		JOIN pg_catalog.pg_class ic ON ic.oid = ix.indexrelid
		WHERE ix.indrelid = $1::oid`, t.OID)
	if err != nil {
		return err
	}

	valid := map[string]bool{}

	for rows.Next() {
		var name string
		var ok bool

		if err = rows.Scan(&name, &ok); err != nil {
			rows.Close()
			return err
		}

		valid[name] = ok
	}

	rows.Close()

	if err = rows.Err(); err != nil {
		return err
	}

	var drops, names, fields []string

	for _, f := range x.fields {
		name := pgIndexName(t.Name, f)

		ok, exists := valid[name]
		if exists && ok {
			continue
		}

		if exists {
			drops = append(drops, fmt.Sprintf(`DROP INDEX IF EXISTS %s`, pgx.Identifier{t.Schema, name}.Sanitize()))
		}

		names = append(names, name)
		fields = append(fields, f)
	}

	// create is the statement for the index of names[i], on fields[i]; the field
	// was checked by parseIndexFields, so no quote can be in it. fastupdate off:
	// each row gives these indexes one key, so the pending list saves little, and
	// its clean-up (by whichever write finds it full, or by a query after a bulk
	// load) made single requests take hundreds of milliseconds.
	create := func(i int, how string) string {
		return fmt.Sprintf(
			`CREATE INDEX %sIF NOT EXISTS %s ON %s USING gin ((_jsonb -> '%s') jsonb_path_ops) WITH (fastupdate = off)`,
			how,
			pgx.Identifier{names[i]}.Sanitize(),
			pgx.Identifier{t.Schema, t.Name}.Sanitize(),
			fields[i],
		)
	}

	if len(names) == 0 {
		return nil
	}

	var size *int64 // NULL: the table was dropped meanwhile
	if err = x.conn.QueryRow(ctx, `SELECT pg_catalog.pg_relation_size($1::oid::regclass)`, t.OID).Scan(&size); err != nil {
		return err
	}

	if size == nil {
		return errVanished
	}

	if *size < pgBigTable {
		stmts := append([]string(nil), drops...)
		for i := range names {
			stmts = append(stmts, create(i, ""))
		}

		// Without arguments pgx sends one simple-protocol query: the statements
		// run as one implicit transaction.
		if _, err = x.conn.Exec(ctx, strings.Join(stmts, ";\n")); err != nil {
			return err
		}

		x.l.Debug("indexer: indexes created", "db", t.Schema, "collection", coll, "indexes", names)

		return nil
	}

	x.l.Info("indexer: building indexes concurrently on a big table",
		"db", t.Schema, "collection", coll, "bytes", *size, "indexes", names)

	if _, err = x.conn.Exec(ctx, `SET lock_timeout = '`+pgBigLockTimeout+`'`); err != nil {
		return err
	}

	defer func() {
		if x.conn != nil && !x.conn.IsClosed() {
			_, _ = x.conn.Exec(context.WithoutCancel(ctx), `SET lock_timeout = '`+pgLockTimeout+`'`)
		}
	}()

	for _, d := range drops {
		if _, err = x.conn.Exec(ctx, d); err != nil {
			return err
		}
	}

	for i := range names {
		start := time.Now()

		if _, err = x.conn.Exec(ctx, create(i, "CONCURRENTLY ")); err != nil {
			return err
		}

		x.l.Info("indexer: index built", "db", t.Schema, "collection", coll, "index", names[i],
			"took", time.Since(start).Round(time.Millisecond))
	}

	return nil
}

// transient tells errors that the next tick resolves by itself: the table or
// database was dropped meanwhile, or a lock was not granted in time.
func (x *pgIndexer) transient(err error) bool {
	if errors.Is(err, errVanished) {
		return true
	}

	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}

	switch pgErr.Code {
	case "42P01", // undefined_table
		"3F000", // invalid_schema_name
		"42704", // undefined_object
		"55P03", // lock_not_available (lock_timeout)
		"40P01", // deadlock_detected
		"40001", // serialization_failure
		"23505", // unique_violation (another session created the same name)
		"XX000": // internal_error: "could not open relation with OID" after a drop
		return true
	}

	return false
}

// pgIndexName is `<table>_tdg_<field>`, or, when that exceeds 63 bytes, the
// table name cut short plus `_tdg_` and a hash of table and field, so that
// different fields never share a name.
func pgIndexName(table, field string) string {
	name := table + "_tdg_" + field
	if len(name) <= pgMaxIdentifier {
		return name
	}

	h := fnv.New32a()
	_, _ = h.Write([]byte(table + "\x00" + field))
	suffix := fmt.Sprintf("_tdg_%08x", h.Sum32())

	prefix := table
	if l := pgMaxIdentifier - len(suffix); len(prefix) > l {
		prefix = prefix[:l]
		for len(prefix) > 0 && !utf8.ValidString(prefix) {
			prefix = prefix[:len(prefix)-1]
		}
	}

	return prefix + suffix
}

// --- SQLite ---------------------------------------------------------------------

// sqliteIndexer creates, in every `<dir>/*.sqlite` database of FerretDB, an
// index on `(_ferretdb_sjson->'$._id')` for each collection table: FerretDB's
// finds and updates by _id use exactly that expression, while its own _id index
// is on `_ferretdb_sjson->"_id"`, which SQLite cannot use for them.
//
// A database file is opened only while its indexes are checked (a few
// milliseconds), with mode=rw so that a database FerretDB has just dropped is never
// created again. The window is kept short because a connection that is open while
// FerretDB drops the database keeps its -wal and -shm files on disk until it closes.
type sqliteIndexer struct {
	dir string
	l   *slog.Logger

	// seen holds, per database file, the file's state when all its tables had
	// their index; a file in the same state again is not opened.
	seen map[string]fileStamp
}

// fileStamp changes whenever FerretDB writes to a database (WAL mode writes
// to the -wal file; a checkpoint writes to the main file).
type fileStamp struct {
	ino, size, walSize int64
	mtime, walMtime    int64
}

// newSQLiteIndexer only records the folder; databases appear in it at any time.
func newSQLiteIndexer(dir string, l *slog.Logger) *sqliteIndexer {
	return &sqliteIndexer{dir: dir, l: l, seen: map[string]fileStamp{}}
}

// close has nothing to release: no connection outlives a pass.
func (x *sqliteIndexer) close() {}

// stamp reads a database file's state; an error means the file is gone.
func stamp(path string) (fileStamp, error) {
	var s fileStamp

	fi, err := os.Stat(path)
	if err != nil {
		return s, err
	}

	s.size, s.mtime = fi.Size(), fi.ModTime().UnixNano()
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = int64(st.Ino)
	}

	if wi, err := os.Stat(path + "-wal"); err == nil {
		s.walSize, s.walMtime = wi.Size(), wi.ModTime().UnixNano()
	}

	return s, nil
}

// pass stats every database file and opens only those that changed.
func (x *sqliteIndexer) pass(ctx context.Context) error {
	entries, err := os.ReadDir(x.dir)
	if err != nil {
		return fmt.Errorf("reading %s: %w", x.dir, err)
	}

	present := map[string]bool{}

	var failed []error

	for _, e := range entries {
		if ctx.Err() != nil {
			return nil
		}

		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sqlite") {
			continue
		}

		path := filepath.Join(x.dir, e.Name())

		s, err := stamp(path)
		if err != nil {
			continue // dropped meanwhile
		}

		present[path] = true

		if prev, ok := x.seen[path]; ok && prev == s {
			continue
		}

		if err = x.indexFile(ctx, path); err != nil {
			if sqliteTransient(err) {
				x.l.Debug("indexer: database vanished or busy; next tick", "file", path, "error", err)
				continue
			}

			failed = append(failed, fmt.Errorf("indexing %s: %w", e.Name(), err))

			continue
		}

		// The state from before the check: anything written since, a new table
		// included, makes the next pass look again.
		x.seen[path] = s
	}

	for path := range x.seen {
		if !present[path] {
			delete(x.seen, path)
		}
	}

	return errors.Join(failed...)
}

// indexFile opens one database, creates the index on each FerretDB table that
// lacks it, and closes the database again.
func (x *sqliteIndexer) indexFile(ctx context.Context, path string) error {
	u := url.URL{
		Scheme:   "file",
		Path:     path,
		RawQuery: fmt.Sprintf("mode=rw&_pragma=busy_timeout(%d)", sqliteBusyTimeout),
	}

	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return err
	}
	defer db.Close()

	db.SetMaxOpenConns(1)

	// FerretDB's collection tables are the ones in its metadata table.
	rows, err := db.QueryContext(ctx, `
		SELECT t.name
		FROM sqlite_schema t
		WHERE t.type = 'table'
		  AND t.name NOT LIKE '\_ferretdb\_%' ESCAPE '\'
		  AND t.name NOT LIKE 'sqlite\_%' ESCAPE '\'
		  AND t.name IN (SELECT table_name FROM _ferretdb_collections)
		  AND NOT EXISTS (
		    SELECT 1 FROM sqlite_schema i
		    WHERE i.type = 'index' AND i.tbl_name = t.name AND i.name = t.name || '_tdg_id_path')`)
	if err != nil {
		return err
	}

	var tables []string

	for rows.Next() {
		var t string
		if err = rows.Scan(&t); err != nil {
			rows.Close()
			return err
		}

		tables = append(tables, t)
	}

	rows.Close()

	if err = rows.Err(); err != nil {
		return err
	}

	for _, t := range tables {
		q := fmt.Sprintf(
			`CREATE INDEX IF NOT EXISTS %s ON %s (_ferretdb_sjson->'$._id')`,
			sqliteIdent(t+"_tdg_id_path"),
			sqliteIdent(t),
		)

		start := time.Now()

		if _, err = db.ExecContext(ctx, q); err != nil {
			return err
		}

		x.l.Debug("indexer: index created", "file", path, "table", t,
			"took", time.Since(start).Round(time.Millisecond))
	}

	return nil
}

// sqliteIdent quotes an SQLite identifier.
func sqliteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// sqliteTransient tells errors the next tick resolves by itself: the database or
// table was dropped meanwhile, or FerretDB held the write lock too long.
func sqliteTransient(err error) bool {
	msg := err.Error()
	for _, s := range []string{
		"no such table",
		"unable to open database file",
		"database is locked",
		"SQLITE_BUSY",
		"SQLITE_CANTOPEN",
		"disk I/O error", // the file was removed under an open connection
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}

	return false
}
