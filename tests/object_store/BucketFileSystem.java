package cehrgpt.test;

import java.io.IOException;
import java.net.URI;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;

/**
 * A stand-in object-store connector for tests: serves {@code s3a://bucket/<absolute local path>} (or any
 * scheme it is registered for with {@code fs.<scheme>.impl}) from the local disk. A job under test then
 * meets a non-local scheme on every path it reads, writes, renames and deletes, exactly as with the real
 * s3a or gs connectors, which cannot be downloaded on the test machine. Statuses carry no owner or
 * permissions, as an object store's do.
 */
public class BucketFileSystem extends RawLocalFileSystem {
  private URI bucket;

  @Override
  public void initialize(URI name, Configuration conf) throws IOException {
    bucket = URI.create(name.getScheme() + "://" + name.getAuthority() + "/");
    super.initialize(name, conf);
  }

  @Override
  public URI getUri() {
    return bucket == null ? super.getUri() : bucket;
  }

  @Override
  public String getScheme() {
    return bucket == null ? super.getScheme() : bucket.getScheme();
  }

  @Override
  public FileStatus getFileStatus(Path path) throws IOException {
    return withoutPermissions(super.getFileStatus(path));
  }

  @Override
  public FileStatus[] listStatus(Path path) throws IOException {
    FileStatus[] statuses = super.listStatus(path);
    for (int i = 0; i < statuses.length; i++) {
      statuses[i] = withoutPermissions(statuses[i]);
    }
    return statuses;
  }

  private static FileStatus withoutPermissions(FileStatus status) {
    return new FileStatus(status.getLen(), status.isDirectory(), status.getReplication(),
        status.getBlockSize(), status.getModificationTime(), status.getPath());
  }
}
