# 185_prometheus.pl: monitoring/qlater-queries.yaml read by the real
# prometheus-postgres-exporter (Debian's, 0.11), connected as a monitoring
# role that has only the grants the README names (pg_monitor; USAGE on the
# schema, which PUBLIC has on public): after known work (jobs done, failed,
# dead, cancelled, scheduled; a paused queue with ready jobs; a job running)
# /metrics, scraped over loopback, has each series with its exact value,
# every one labelled with its database, counters and histograms typed as
# such, histograms whose buckets, count and sum are the view's and agree
# with the history; then Debian's prometheus scrapes the exporter and every
# PromQL expression of monitoring/grafana-qlater.json (and of its template
# variables) returns series.  Both processes are stopped at the end, also
# on failure.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use Time::HiRes qw(usleep);

my $exporter_bin = '/usr/bin/prometheus-postgres-exporter';
my $prometheus_bin = '/usr/bin/prometheus';
plan skip_all => 'prometheus-postgres-exporter and prometheus are not installed (Debian packages)'
  unless -x $exporter_bin && -x $prometheus_bin;

my $root = File::Spec->rel2abs(dirname(__FILE__) . '/../..');
my $queries = "$root/monitoring/qlater-queries.yaml";
my $dashboard = "$root/monitoring/grafana-qlater.json";
my $tmp = PostgreSQL::Test::Utils::tempdir;
my $http = HTTP::Tiny->new(timeout => 10);
my (@procs);

# whatever happens, the exporter and prometheus are stopped
sub stop_procs
{
	for my $h (@procs)
	{
		next unless $h->pumpable;
		eval { $h->signal('TERM'); };
		eval { $h->finish; };
	}
	@procs = ();
}
END { stop_procs(); }

my $node = PostgreSQL::Test::Cluster->new('prometheus');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'qlater'\nqlater.max_workers = 2\nmax_worker_processes = 16\n");
$node->start;
$node->safe_psql(
	'postgres', q{
CREATE EXTENSION qlater;
CREATE ROLE alice LOGIN;
CREATE ROLE nobody LOGIN;
-- the monitoring role: exactly the grants monitoring/README.md names
CREATE ROLE qlater_monitor LOGIN IN ROLE pg_monitor;
CREATE ROLE stats_reader LOGIN IN ROLE pg_read_all_stats;
CREATE TABLE release (x int);
GRANT SELECT ON release TO PUBLIC;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION bad(label text) RETURNS void LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION 'bad %', label; END $$;
-- runs until a row is in release (two minutes at most)
CREATE FUNCTION hold(label text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1 .. 1200 LOOP
    EXIT WHEN EXISTS (SELECT FROM public.release);
    PERFORM pg_sleep(0.1);
  END LOOP;
END $$;
ALTER FUNCTION ok(text) OWNER TO alice;
ALTER FUNCTION bad(text) OWNER TO alice;
ALTER FUNCTION hold(text) OWNER TO alice;
});
is( $node->safe_psql(
		'postgres', q{SELECT concat_ws(' ', rolsuper, pg_has_role('qlater_monitor', 'qlater_admin', 'MEMBER'),
		  pg_has_role('qlater_monitor', 'pg_monitor', 'MEMBER'), has_schema_privilege('qlater_monitor', 'public', 'USAGE'))
		  FROM pg_roles WHERE rolname = 'qlater_monitor'}),
	'f f t t',
	'the monitoring role: no superuser, not qlater_admin; pg_monitor and USAGE on the schema only');

sub as
{
	my ($role, $q) = @_;
	return $node->safe_psql('postgres', $q, defined $role ? (extra_params => [ '-U', $role ]) : ());
}
as('alice', "SELECT qlater_register('$_')") for ('ok(text)', 'bad(text)', 'hold(text)');
as('alice', "SELECT qlater_create_queue('$_')") for ('work', 'held', 'slowq');
as('alice', q{SELECT qlater_pause_queue('held')});

### known work
# work: 5 done; one dead at its only attempt; one failed once then dead
# (retried after 4 s); one cancelled; one scheduled an hour later
as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('ok' || g), queue => 'work'))
              FROM generate_series(1, 5) g});
as('alice', q{SELECT qlater_enqueue('bad', '["once"]', queue => 'work', max_attempts => 1)});
as('alice', q{SELECT qlater_enqueue('bad', '["twice"]', queue => 'work', max_attempts => 2)});
as('alice', q{SELECT qlater_cancel(qlater_enqueue('ok', '["cancelled"]', queue => 'work',
                                                  run_at => now() + interval '1 hour'))});
as('alice', q{SELECT qlater_enqueue('ok', '["later"]', queue => 'work', run_at => now() + interval '1 hour')});
# held (paused): 3 ready jobs that wait
as('alice', q{SELECT count(qlater_enqueue('ok', jsonb_build_array('held' || g), queue => 'held'))
              FROM generate_series(1, 3) g});
# slowq: one job running
as('alice', q{SELECT qlater_enqueue('hold', '["running"]', queue => 'slowq')});

ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 2 FROM qlater_jobs WHERE queue = 'work' AND state = 'dead'}),
	'work: two jobs dead');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 8 FROM qlater_history WHERE queue = 'work' AND started_at IS NOT NULL}),
	'work: 8 attempts run (5 done, 1 failed, 2 dead)');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM qlater_jobs WHERE queue = 'slowq' AND state = 'running'}),
	'slowq: its job runs');

# the monitoring role sees every queue; a role without pg_monitor does not
my $all = as(undef, q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats});
like($all, qr/held.*slowq.*work/, 'qlater_queue_stats: the queues');
is(as('qlater_monitor', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats}),
	$all, 'the monitoring role sees every queue of qlater_queue_stats');
my $hist_all = as(undef, q{SELECT string_agg(queue || ':' || kind, ',' ORDER BY queue, kind) FROM qlater_queue_histograms});
like($hist_all, qr/work:run,work:wait/, 'qlater_queue_histograms: work\'s');
is(as('qlater_monitor', q{SELECT string_agg(queue || ':' || kind, ',' ORDER BY queue, kind) FROM qlater_queue_histograms}),
	$hist_all, 'the monitoring role sees every queue of qlater_queue_histograms');
is(as('stats_reader', q{SELECT string_agg(queue, ',' ORDER BY queue) FROM qlater_queue_stats}),
	$all, 'a role in pg_read_all_stats alone sees every queue of qlater_queue_stats too');
is(as('qlater_monitor', q{SELECT count(*) FROM qlater_running WHERE queue = 'slowq'}),
	'1', 'the monitoring role sees the running job of qlater_running');
is( as(
		'nobody', q{SELECT (SELECT count(*) FROM qlater_queue_stats WHERE queue IN ('held', 'slowq', 'work'))
		  + (SELECT count(*) FROM qlater_queue_histograms)}),
	'0', 'a role without pg_monitor sees none of alice\'s queues');

# a second database with qlater: one job done in its queue work
$node->safe_psql('postgres', 'CREATE DATABASE app2');
$node->safe_psql('app2', q{
CREATE EXTENSION qlater;
CREATE FUNCTION ok(label text) RETURNS void LANGUAGE sql AS $$ SELECT $$;
ALTER FUNCTION ok(text) OWNER TO alice;
});
$node->safe_psql('app2', q{SELECT qlater_register('ok(text)');
  SELECT qlater_create_queue('work');
  SELECT qlater_enqueue('ok', '["app2"]', queue => 'work')}, extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'app2', q{SELECT count(*) = 1 FROM qlater_history WHERE outcome = 'done'}),
	'app2: its job done');
# then a job done in each of 260 more queues of alice's: past the 64 tracked
# per owner, the others are counted together (queue NULL: "(other)")
$node->safe_psql('app2', q{SELECT count(qlater_enqueue('ok', '["x"]', queue => 'x' || lpad(g::text, 3, '0')))
  FROM generate_series(1, 260) g}, extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until(
		'app2', q{SELECT count(*) = 261 FROM qlater_history WHERE outcome = 'done'}),
	'app2: 261 jobs done');
my $other = $node->safe_psql('app2', q{SELECT done_total FROM qlater_queue_stats WHERE queue IS NULL});
is($other, '197', 'app2: 261 queues of one owner with a job done, 64 tracked: 197 jobs done counted together (queue NULL)');
is( $node->safe_psql(
		'app2', q{SELECT count(*) FROM qlater_history
		  WHERE outcome = 'done' AND queue IN (SELECT queue FROM qlater_queue_stats WHERE done_total IS NULL)}),
	$other, 'app2: they are the jobs done of the queues without counters of their own');

### the exporters, as the monitoring role: one per database
# start_exporter(dbname): its port and log
sub start_exporter
{
	my ($db) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	my $log = "$tmp/exporter_$db.log";
	local $ENV{DATA_SOURCE_NAME} =
	  'host=' . $node->host . ' port=' . $node->port . " dbname=$db user=qlater_monitor sslmode=disable";
	push @procs,
	  IPC::Run::start(
		[
			$exporter_bin, "--web.listen-address=127.0.0.1:$port",
			"--extend.query-path=$queries", '--disable-default-metrics',
			'--disable-settings-metrics', '--no-collector.database',
			'--no-collector.bgwriter'
		],
		'<', \undef, '>&', $log);
	return ($port, $log);
}
my ($eport, $exporter_log) = start_exporter('postgres');
my ($eport2, $exporter_log2) = start_exporter('app2');

# /metrics of the exporter on $port as text, once it answers
sub scrape
{
	my ($port, $log) = @_;
	for (1 .. 100)
	{
		my $r = $http->get("http://127.0.0.1:$port/metrics");
		return $r->{content} if $r->{success};
		usleep(100_000);
	}
	die "the exporter does not answer on 127.0.0.1:$port: " . slurp_file($log);
}

# series: "name" => [ [ {labels}, value ], ... ]; types: "name" => type
sub parse
{
	my ($text) = @_;
	my (%series, %types);
	for my $line (split /\n/, $text)
	{
		if ($line =~ /^# TYPE (\S+) (\S+)/) { $types{$1} = $2; next; }
		next if $line =~ /^#/ || $line !~ /\S/;
		$line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/ or die "unparsed line: $line";
		my ($name, $l, $v) = ($1, $2 // '', $3);
		my %labels;
		while ($l =~ /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g) { $labels{$1} = $2; }
		push @{ $series{$name} }, [ \%labels, $v ];
	}
	return (\%series, \%types);
}

my ($series, $types) = parse(scrape($eport2, $exporter_log2));

# the value of the one series of $name whose labels include %want
sub value
{
	my ($name, %want) = @_;
	my @m = grep {
		my $s = $_;
		!grep { !defined $s->[0]{$_} || $s->[0]{$_} ne $want{$_} } keys %want
	} @{ $series->{$name} // [] };
	return scalar(@m) == 1 ? $m[0][1] : scalar(@m) . ' series';
}

is(value('qlater_jobs_done_total', database => 'app2', queue => 'work'), '1',
	'the exporter of app2: qlater_jobs_done_total{database="app2",queue="work"} 1');
is(value('qlater_job_run_seconds_count', database => 'app2', queue => 'work'), '1',
	'the exporter of app2: qlater_job_run_seconds_count 1');
is(scalar(grep { $_->[0]{database} ne 'app2' } map { @{ $series->{$_} } } grep { /^qlater_/ } keys %$series),
	0, 'the exporter of app2: every qlater series is app2\'s');
is(value('qlater_jobs_done_total', database => 'app2', queue => '(other)'), $other,
	'the exporter of app2: qlater_jobs_done_total{queue="(other)"}, the queues counted together');
is(value('qlater_job_run_seconds_count', database => 'app2', queue => '(other)'), $other,
	'the exporter of app2: qlater_job_run_seconds_count{queue="(other)"}');
is(scalar(@{ $series->{qlater_jobs_done_total} }),
	$node->safe_psql('app2', 'SELECT count(*) FROM qlater_queue_stats WHERE done_total IS NOT NULL'),
	'the exporter of app2: done counters of the queues tracked (64 of alice\'s, and the others\'), and of "(other)"');
is(scalar(@{ $series->{qlater_jobs_ready} }), $node->safe_psql('app2', 'SELECT count(*) FROM qlater_queues'),
	'the exporter of app2: the depth of every queue');
is(scalar(grep { $_->[1] !~ /^[-+0-9.e]+$|^\+Inf$/ } map { @{ $series->{$_} } } grep { /^qlater_/ } keys %$series),
	0, 'the exporter of app2: no NaN (queues without counters leave none)');

($series, $types) = parse(scrape($eport, $exporter_log));
is(value('pg_up'), '1', 'exporter: pg_up 1');
is(value('pg_exporter_last_scrape_error'), '0', 'exporter: no scrape error (every query ran)');
my %q = (database => 'postgres');
is(value('qlater_jobs_ready', %q, queue => 'held'), '3', 'qlater_jobs_ready{queue="held"} 3');
is(value('qlater_jobs_ready', %q, queue => 'work'), '0', 'qlater_jobs_ready{queue="work"} 0');
is(value('qlater_jobs_scheduled', %q, queue => 'work'), '1', 'qlater_jobs_scheduled{queue="work"} 1');
is(value('qlater_jobs_dead', %q, queue => 'work'), '2', 'qlater_jobs_dead{queue="work"} 2');
is(value('qlater_jobs_running', %q, queue => 'slowq'), '1', 'qlater_jobs_running{queue="slowq"} 1');
is(value('qlater_jobs_running', %q, queue => 'work'), '0', 'qlater_jobs_running{queue="work"} 0');
is(value('qlater_queue_paused', %q, queue => 'held'), '1', 'qlater_queue_paused{queue="held"} 1');
is(value('qlater_queue_paused', %q, queue => 'work'), '0', 'qlater_queue_paused{queue="work"} 0');
is(value('qlater_queue_external', %q, queue => 'work'), '0', 'qlater_queue_external{queue="work"} 0');
cmp_ok(value('qlater_queue_lag_seconds', %q, queue => 'held'), '>', 0, 'qlater_queue_lag_seconds of held > 0');
is(value('qlater_queue_lag_seconds', %q, queue => 'work'), '0', 'qlater_queue_lag_seconds of work: 0 (none ready)');
cmp_ok(value('qlater_queue_depth_age_seconds', %q, queue => 'work'), '>=', 0, 'qlater_queue_depth_age_seconds of work');
is(value('qlater_jobs_done_total', %q, queue => 'work'), '5', 'qlater_jobs_done_total{queue="work"} 5');
is(value('qlater_jobs_failed_total', %q, queue => 'work'), '1', 'qlater_jobs_failed_total{queue="work"} 1');
is(value('qlater_jobs_dead_total', %q, queue => 'work'), '2', 'qlater_jobs_dead_total{queue="work"} 2');
is(value('qlater_jobs_cancelled_total', %q, queue => 'work'), '1', 'qlater_jobs_cancelled_total{queue="work"} 1');
is(value('qlater_jobs_done_total', %q, queue => 'held'), '0', 'qlater_jobs_done_total{queue="held"} 0');
is(value('qlater_jobs_timeout_total', %q, queue => 'work'), '0', 'qlater_jobs_timeout_total{queue="work"} 0');
cmp_ok(
	abs(value('qlater_stats_start_time_seconds', %q, queue => 'work') -
		  as(undef, q{SELECT extract(epoch FROM stats_since) FROM qlater_queue_stats WHERE queue = 'work'})),
	'<', 1e-3, 'qlater_stats_start_time_seconds: stats_since');
is(value('qlater_running_jobs', %q, queue => 'slowq', kind => 'worker'), '1',
	'qlater_running_jobs{queue="slowq",kind="worker"} 1');
cmp_ok(value('qlater_running_longest_seconds', %q, queue => 'slowq', kind => 'worker'), '>', 0,
	'qlater_running_longest_seconds of slowq');
like(value('qlater_job_recent_run_seconds', %q, queue => 'work', quantile => '0.95'), qr/^[0-9.e+-]+$/,
	'qlater_job_recent_run_seconds{quantile="0.95"} of work');
like(value('qlater_job_recent_wait_seconds', %q, queue => 'work', quantile => '0.5'), qr/^[0-9.e+-]+$/,
	'qlater_job_recent_wait_seconds{quantile="0.5"} of work');

is($types->{$_}, 'counter', "$_ is a counter")
  for map { "qlater_jobs_${_}_total" } qw(done failed dead timeout crashed cancelled purged);
is($types->{$_}, 'gauge', "$_ is a gauge")
  for qw(qlater_jobs_ready qlater_jobs_scheduled qlater_jobs_running qlater_jobs_dead
  qlater_queue_paused qlater_queue_lag_seconds);
is($types->{$_}, 'histogram', "$_ is a histogram") for qw(qlater_job_wait_seconds qlater_job_run_seconds);

# every qlater series is labelled with its database and holds a number
my @qlater = grep { /^qlater_/ } keys %$series;
my @bad = grep {
	my $n = $_;
	grep { ($_->[0]{database} // '') ne 'postgres' || $_->[1] !~ /^[-+0-9.e]+$|^\+Inf$/ } @{ $series->{$n} }
} @qlater;
is("@bad", '', 'every qlater series has database="postgres" and a value that is a number (no NaN)');
cmp_ok(scalar(@qlater), '>=', 20, 'qlater metrics exported: ' . scalar(@qlater));

# histograms: the view's buckets, count and sum; count = attempts of the history
for my $kind ('wait', 'run')
{
	my $m = "qlater_job_${kind}_seconds";
	my ($le, $buckets, $sum, $count) = split /\|/, as(undef,
		qq{SELECT array_to_string(le, ','), array_to_string(buckets, ','), sum, count
		     FROM qlater_queue_histograms WHERE queue = 'work' AND kind = '$kind'});
	is(value("${m}_count", %q, queue => 'work'), '8', "$m: count 8, the attempts run");
	is($count, '8', "qlater_queue_histograms: count 8 ($kind)");
	is(value("${m}_bucket", %q, queue => 'work', le => '+Inf'), '8', "$m: bucket +Inf = count");
	my @le = split /,/, $le;
	my @b = split /,/, $buckets;
	my @got = map {
		my $l = $_ eq 'Infinity' ? '+Inf' : $_;
		value("${m}_bucket", %q, queue => 'work', le => $l)
	} @le;
	is("@got", "@b", "$m: the buckets of the view, le by le ($le)");
	my @sorted = sort { $a <=> $b } @got;
	is("@got", "@sorted", "$m: cumulative (never decreasing)");
	cmp_ok(abs(value("${m}_sum", %q, queue => 'work') - $sum), '<', 1e-6, "$m: sum of the view");
	my $expr = $kind eq 'wait' ? 'started_at - run_at' : 'runtime';
	my $hsum = as(undef,
		qq{SELECT sum(extract(epoch FROM $expr)) FROM qlater_history WHERE queue = 'work' AND started_at IS NOT NULL});
	cmp_ok(abs($sum - $hsum), '<', 0.1 + 0.02 * $hsum, "$m: sum agrees with the history ($sum vs $hsum)");
	is(value("${m}_count", %q, queue => 'held'), '0 series', "$m: none for held (no attempt yet)");
}

### prometheus scrapes the exporter; every expression of the dashboard returns series
my $pport = PostgreSQL::Test::Cluster::get_free_port();
open my $cf, '>', "$tmp/prometheus.yml" or die $!;
print $cf <<"EOF";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: qlater
    static_configs:
      - targets: ['127.0.0.1:$eport', '127.0.0.1:$eport2']
EOF
close $cf;
my $prom_log = "$tmp/prometheus.log";
push @procs,
  IPC::Run::start(
	[
		$prometheus_bin, "--config.file=$tmp/prometheus.yml",
		"--storage.tsdb.path=$tmp/tsdb", "--web.listen-address=127.0.0.1:$pport"
	],
	'<', \undef, '>&', $prom_log);

sub promql
{
	my ($expr) = @_;
	my $r = $http->post_form("http://127.0.0.1:$pport/api/v1/query", { query => $expr });
	return undef unless $r->{success};
	my $d = decode_json($r->{content});
	return $d->{status} eq 'success' ? $d->{data}{result} : undef;
}

# three samples of every series at least (rate() needs two)
my $ready = 0;
for (1 .. 300)
{
	my $r = promql('min(count_over_time(qlater_jobs_done_total[1m]))');
	if ($r && @$r && $r->[0]{value}[1] >= 3) { $ready = 1; last; }
	usleep(100_000);
}
ok($ready, 'prometheus has scraped the exporter three times')
  or diag(slurp_file($prom_log), $http->get("http://127.0.0.1:$pport/api/v1/targets")->{content});

my $dash = decode_json(slurp_file($dashboard));
my @exprs;
for my $p (@{ $dash->{panels} })
{
	push @exprs, [ $p->{title}, $_->{expr} ] for @{ $p->{targets} };
}
for my $v (@{ $dash->{templating}{list} })
{
	next unless $v->{type} eq 'query';
	my $d = ref $v->{query} ? $v->{query}{query} : $v->{query};
	$d =~ /^label_values\((.*),\s*(\w+)\)$/ or die "unexpected variable query $d";
	push @exprs, [ "variable $v->{name} (label $2)", $1 ];
}
cmp_ok(scalar(@exprs), '>=', 12, 'the dashboard has ' . scalar(@exprs) . ' expressions');
for my $e (@exprs)
{
	my ($title, $expr) = @$e;
	(my $x = $expr) =~ s/\$\{?__rate_interval\}?/1m/g;
	$x =~ s/\$\{?database\}?/postgres/g;
	$x =~ s/\$\{?queue\}?/.*/g;
	unlike($x, qr/\$/, "$title: no template variable left in $x");
	my $r = promql($x);
	ok($r && @$r, "$title: $x returns series") or diag(explain($r));
}
is(scalar(@{ promql('qlater_queue_paused{database="postgres"} == 1') }),
	1, 'paused queues: one (held)');
is( join(',', sort map { $_->{metric}{database} } @{ promql('count by (database) (qlater_jobs_ready)') }),
	'app2,postgres', 'prometheus: the series of both databases, apart');
is( join(',',
		sort map { "$_->{metric}{database}:$_->{value}[1]" }
		  @{ promql('sum by (database) (qlater_jobs_done_total{queue="work"})') }),
	'app2:1,postgres:5', 'prometheus: jobs done in queue work, by database');

stop_procs();
for my $log ($exporter_log, $exporter_log2)
{
	my $elog = slurp_file($log);
	unlike($elog, qr/level=(error|warn)|err=/, "the exporter logged no error ($log)") or diag($elog);
}

# the running job ends
$node->safe_psql('postgres', 'INSERT INTO release VALUES (1)');
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 0 FROM qlater_jobs WHERE queue = 'slowq'}),
	'slowq: its job ends');
$node->stop;
done_testing();
