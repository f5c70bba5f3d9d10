# 0.50's daemon side and immediate deliveries through mailspool: create_dequeue_dirs as a
# method and as a function, Interactive and Background sends to an SMTP sink (run here,
# on 127.0.0.1 and a port of its own) that leave no lock temp behind, and dequeue()
# delivering what Deferred queued, through the `mailspool` program ($MAILSPOOL_BIN).
use strict;
use warnings;
use Test::More;
use File::Temp qw(tempdir);
use IO::Socket::INET;
use Mail::Spool qw(send_mail dequeue create_dequeue_dirs);

plan skip_all => 'MAILSPOOL_BIN names the mailspool program' unless $ENV{MAILSPOOL_BIN};

my $dir = tempdir(CLEANUP => 1);
my $spool_dir = "$dir/spool";

# The sink: each connection's RCPT addresses and message appended to a file, one line
# per message ("rcpt1,rcpt2 BYTES"); "later@" gets 451, "gone@" 550.
my $log = "$dir/sink.log";
my $listener = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0,
                                     Listen => 16, ReuseAddr => 1) or die "listen: $!";
my $port = $listener->sockport;
my $sink = fork // die;
if (!$sink) {
    while (my $c = $listener->accept) {
        $c->autoflush(1);
        print $c "220 sink.test ESMTP\r\n";
        my @rcpt;
        while (defined(my $line = <$c>)) {
            if ($line =~ /^(EHLO|HELO)/i) { print $c "250 sink.test\r\n" }
            elsif ($line =~ /^RCPT TO:<([^>]*)>/i) {
                my $to = $1;
                if ($to =~ /^later@/) { print $c "451 4.2.1 try later\r\n" }
                elsif ($to =~ /^gone@/) { print $c "550 5.1.1 no such user\r\n" }
                else { push @rcpt, $to; print $c "250 ok\r\n" }
            }
            elsif ($line =~ /^DATA/i) {
                print $c "354 go\r\n";
                my $data = '';
                while (defined(my $l = <$c>)) { last if $l eq ".\r\n"; $data .= $l }
                open(my $f, '>>', $log) or die; print $f join(',', @rcpt), ' ', length($data), "\n"; close $f;
                @rcpt = ();
                print $c "250 2.0.0 queued\r\n";
            }
            elsif ($line =~ /^QUIT/i) { print $c "221 bye\r\n"; last }
            else { print $c "250 ok\r\n" }
        }
        close $c;
    }
    exit 0;
}
close $listener;
END { kill 'TERM', $sink if $sink; }

open(my $c, '>', "$dir/mailspool.toml") or die $!;
print $c qq{hostname = "test.host"\ntls = "none"\n[routes]\n"rcpt.test" = "127.0.0.1:$port"\n},
         qq{[timeouts]\nconnect = 5\ncommand = 5\ngreeting = 5\ndata_end = 5\n};
close $c;
$ENV{MAILSPOOL_CONFIG} = "$dir/mailspool.toml";
delete $ENV{MAILSPOOL_SPOOL};

sub sink_lines { open(my $f, '<', $log) or return (); my @l = <$f>; chomp @l; return @l }
sub entries { my $d = shift; opendir(my $h, $d) or return (); return grep { !/^\.\.?$/ } readdir $h }
sub lock_temps { return grep { /^\.lk\./ } map { entries("$spool_dir/$_") } 0 .. 6 }

# create_dequeue_dirs: as a method, then as 0.50's function on $DEQUEUE_DIR.
my $spool = Mail::Spool->new(dequeue_dir => $spool_dir);
ok($spool->create_dequeue_dirs, 'create_dequeue_dirs as a method');
ok(-d "$spool_dir/$_", "tier $_ made") for 0 .. 6;
is((stat $spool_dir)[2] & 07777, 0700, 'the spool is 0700');
{
    local $Mail::Spool::DEQUEUE_DIR = "$dir/other";
    ok(create_dequeue_dirs(), 'create_dequeue_dirs as a function');
    ok(-d "$dir/other/6", 'on $DEQUEUE_DIR');
}

my $msg = "From: app\@sender.test\nSubject: perl now\n\nhello\n";

# Interactive: delivered before returning, nothing kept, no lock temp left.
my $id = $spool->send_mail(message => $msg, to => 'now@rcpt.test', delivery => 'Interactive');
ok($id, 'Interactive returns the id');
is_deeply([map { (split / /)[0] } sink_lines()], ['now@rcpt.test'], 'delivered to the sink, once');
is_deeply([lock_temps()], [], 'no .lk. temp left in the tiers while the process lives');

# Interactive, mixed: a permanent refusal dies with NotDelivered and exit code 69,
# naming each recipient; the deferred one stays queued, the delivered one is not sent again.
ok(!eval { $spool->send_mail(message => $msg, to => ['ok@rcpt.test', 'later@rcpt.test', 'gone@rcpt.test'],
                             delivery => 'Interactive'); 1 }, 'a refused recipient dies');
my $said = $@;
like($said, qr/^NotDelivered: /, 'NotDelivered');
like($said, qr/<ok\@rcpt\.test>: delivered/, 'the delivered recipient named');
like($said, qr/<later\@rcpt\.test>: queued for retry/, 'the deferred one named');
like($said, qr/<gone\@rcpt\.test>: failed/, 'the refused one named');
is($Mail::Spool::EXIT_CODE, 69, 'exit code 69');
is(scalar(grep { /^ok\@rcpt\.test / } sink_lines()), 1, 'ok@ delivered once');
is_deeply([map { $_->{to} } $spool->queue], ['later@rcpt.test'], 'the deferred recipient stays queued');

# Background: delivered, no lock temp.
$spool->send_mail(message => $msg, to => 'bg@rcpt.test', delivery => 'Background');
is(scalar(grep { /^bg\@rcpt\.test / } sink_lines()), 1, 'Background delivered');
is_deeply([lock_temps()], [], 'no .lk. temp left after Background');

# Deferred, then 0.50's dequeue() as a function: one pass of `mailspool queue run`.
{
    local $Mail::Spool::DEQUEUE_DIR = $spool_dir;
    $id = send_mail({message => $msg, to => 'deq@rcpt.test'});
    ok(dequeue(), 'dequeue runs a pass');
}
is(scalar(grep { /^deq\@rcpt\.test / } sink_lines()), 1, 'dequeue delivered the queued message');
is_deeply([lock_temps()], [], 'no .lk. temp left after the pass');

# A process that sends Interactive and exits leaves nothing behind either.
my $pid = fork // die;
if (!$pid) {
    my $ok = eval { Mail::Spool->new(dequeue_dir => $spool_dir)
                        ->send_mail(message => $msg, to => 'child@rcpt.test', delivery => 'Interactive'); 1 };
    exit($ok ? 0 : 1);
}
waitpid($pid, 0);
is($?, 0, 'a child sent Interactive');
is_deeply([lock_temps()], [], 'and left no .lk. temp at exit');

ok(!eval { $spool->list_spool_handles; 1 }, 'list_spool_handles is not offered');
like($@, qr/dequeue\(\)/, 'and says what to use');

done_testing;
