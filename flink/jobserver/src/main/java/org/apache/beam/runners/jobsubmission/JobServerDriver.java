package org.apache.beam.runners.jobsubmission;

import java.io.IOException;
import java.lang.reflect.Constructor;
import java.nio.file.Paths;
import org.apache.beam.model.pipeline.v1.Endpoints;
import org.apache.beam.runners.fnexecution.artifact.ArtifactStagingService;
import org.apache.beam.sdk.fn.server.FnService;
import org.apache.beam.sdk.fn.server.GrpcFnServer;
import org.apache.beam.sdk.fn.server.ServerFactory;
import org.checkerframework.checker.nullness.qual.Nullable;
import org.kohsuke.args4j.Option;
import org.kohsuke.args4j.spi.ExplicitBooleanOptionHandler;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Serves an {@link InMemoryJobService} and its artifact staging service over gRPC, plus a Java
 * expansion service when one is on the classpath. Runner-specific drivers (FlinkJobServerDriver)
 * subclass it and supply the {@link JobInvokerFactory}.
 */
public abstract class JobServerDriver implements Runnable {
  private static final Logger LOG = LoggerFactory.getLogger(JobServerDriver.class);

  private static final String EXPANSION_SERVER =
      "org.apache.beam.sdk.expansion.service.ExpansionServer";
  private static final String EXPANSION_SERVICE =
      "org.apache.beam.sdk.expansion.service.ExpansionService";

  /** Public because FlinkPortableClientEntryPoint reads it. */
  public ServerConfiguration configuration;

  private final ServerFactory jobServerFactory;
  private final ServerFactory artifactServerFactory;
  private final JobInvokerFactory jobInvokerFactory;

  private volatile @Nullable GrpcFnServer<InMemoryJobService> jobServer;
  private volatile @Nullable GrpcFnServer<ArtifactStagingService> artifactServer;
  private volatile @Nullable AutoCloseable expansionServer;

  /** Creates the runner's {@link JobInvoker} when the server starts. */
  public interface JobInvokerFactory {
    JobInvoker create();
  }

  /** Command-line options of every job server (parsed by args4j). */
  public static class ServerConfiguration {
    @Option(name = "--job-host", usage = "The job server host name (Default: localhost)")
    private String host = "localhost";

    @Option(name = "--job-port", usage = "The job service port. 0 for a dynamic port. (Default: 8099)")
    private int port = 8099;

    @Option(
        name = "--artifact-port",
        usage = "The artifact staging service port. 0 for a dynamic port. (Default: 8098)")
    private int artifactPort = 8098;

    @Option(
        name = "--expansion-port",
        usage =
            "The Java expansion service port, started only if the expansion service is on the"
                + " classpath. 0 for a dynamic port, negative to disable. (Default: 8097)")
    private int expansionPort = 8097;

    @Option(
        name = "--artifacts-dir",
        usage =
            "Where staged artifacts are stored; the execution engine's workers must be able to"
                + " read it.")
    private String artifactStagingPath =
        Paths.get(System.getProperty("java.io.tmpdir"), "beam-artifact-staging").toString();

    @Option(
        name = "--clean-artifacts-per-job",
        usage = "Remove a job's staged artifacts when it finishes (Default: true)",
        handler = ExplicitBooleanOptionHandler.class)
    private boolean cleanArtifactsPerJob = true;

    @Option(name = "--history-size", usage = "How many finished jobs to remember (Default: 10)")
    private int maxInvocationHistory = InMemoryJobService.DEFAULT_HISTORY_SIZE;

    public String getHost() {
      return host;
    }

    public int getPort() {
      return port;
    }

    public void setPort(int port) {
      this.port = port;
    }

    public int getArtifactPort() {
      return artifactPort;
    }

    public void setArtifactPort(int artifactPort) {
      this.artifactPort = artifactPort;
    }

    public int getExpansionPort() {
      return expansionPort;
    }

    public void setExpansionPort(int expansionPort) {
      this.expansionPort = expansionPort;
    }

    public String getArtifactStagingPath() {
      return artifactStagingPath;
    }

    public boolean isCleanArtifactsPerJob() {
      return cleanArtifactsPerJob;
    }

    public int getMaxInvocationHistory() {
      return maxInvocationHistory;
    }
  }

  public static ServerFactory createJobServerFactory(ServerConfiguration configuration) {
    return ServerFactory.createWithPortSupplier(configuration::getPort);
  }

  public static ServerFactory createArtifactServerFactory(ServerConfiguration configuration) {
    return ServerFactory.createWithPortSupplier(configuration::getArtifactPort);
  }

  protected JobServerDriver(
      ServerConfiguration configuration,
      ServerFactory jobServerFactory,
      ServerFactory artifactServerFactory,
      JobInvokerFactory jobInvokerFactory) {
    this.configuration = configuration;
    this.jobServerFactory = jobServerFactory;
    this.artifactServerFactory = artifactServerFactory;
    this.jobInvokerFactory = jobInvokerFactory;
  }

  /** The job service's host:port once it is serving, else null (callers poll this). */
  public @Nullable String getJobServerUrl() {
    GrpcFnServer<InMemoryJobService> server = jobServer;
    return server == null ? null : server.getApiServiceDescriptor().getUrl();
  }

  /** Starts all services and returns the job service's URL. */
  public synchronized String start() throws IOException {
    if (jobServer == null) {
      try {
        startServices();
      } catch (IOException | RuntimeException e) {
        stop();
        throw e;
      }
    }
    return getJobServerUrl();
  }

  private void startServices() throws IOException {
    GrpcFnServer<ArtifactStagingService> artifacts = startArtifactServer();
    artifactServer = artifacts;
    expansionServer = startExpansionServer();
    InMemoryJobService service =
        InMemoryJobService.create(
            artifacts.getService(),
            artifacts.getApiServiceDescriptor(),
            jobInvokerFactory.create(),
            configuration.getMaxInvocationHistory(),
            configuration.isCleanArtifactsPerJob());
    GrpcFnServer<InMemoryJobService> server =
        serve(service, configuration.getPort(), jobServerFactory);
    jobServer = server;
    LOG.info("JobService started on {}", server.getApiServiceDescriptor().getUrl());
  }

  /** Serves until the server is shut down or this thread is interrupted. */
  @Override
  public void run() {
    try {
      start();
      LOG.info("Job server now running, terminate with Ctrl+C");
      GrpcFnServer<InMemoryJobService> server = jobServer;
      if (server != null) {
        server.getServer().awaitTermination();
      }
    } catch (InterruptedException e) {
      LOG.info("Job server interrupted");
      Thread.currentThread().interrupt();
    } catch (Exception e) {
      LOG.error("Job server failed", e);
    } finally {
      stop();
    }
  }

  /** Stops every service that was started; safe to call more than once. */
  public synchronized void stop() {
    jobServer = close(jobServer, "JobService");
    artifactServer = close(artifactServer, "ArtifactStagingService");
    expansionServer = close(expansionServer, "ExpansionService");
  }

  private static <T extends AutoCloseable> @Nullable T close(@Nullable T server, String name) {
    if (server != null) {
      try {
        server.close();
        LOG.info("{} stopped", name);
      } catch (Exception e) {
        LOG.error("Could not stop the {}", name, e);
      }
    }
    return null;
  }

  private GrpcFnServer<ArtifactStagingService> startArtifactServer() throws IOException {
    ArtifactStagingService service =
        new ArtifactStagingService(
            ArtifactStagingService.beamFilesystemArtifactDestinationProvider(
                configuration.getArtifactStagingPath()));
    GrpcFnServer<ArtifactStagingService> server =
        serve(service, configuration.getArtifactPort(), artifactServerFactory);
    LOG.info("ArtifactStagingService started on {}", server.getApiServiceDescriptor().getUrl());
    return server;
  }

  /** Port 0 picks a free port; any other binds host:port. */
  private <T extends FnService> GrpcFnServer<T> serve(T service, int port, ServerFactory factory)
      throws IOException {
    if (port == 0) {
      return GrpcFnServer.allocatePortAndCreateFor(service, factory);
    }
    Endpoints.ApiServiceDescriptor endpoint =
        Endpoints.ApiServiceDescriptor.newBuilder()
            .setUrl(configuration.getHost() + ":" + port)
            .build();
    return GrpcFnServer.create(service, endpoint, factory);
  }

  /**
   * Starts Beam's Java expansion service if it is on the classpath (it is not in this build's
   * dependencies), found by reflection so that the job server works without it.
   */
  private @Nullable AutoCloseable startExpansionServer() {
    int port = configuration.getExpansionPort();
    if (port < 0) {
      LOG.info("Java expansion service disabled (--expansion-port {})", port);
      return null;
    }
    Class<?> serverClass;
    Class<?> serviceClass;
    try {
      serverClass = Class.forName(EXPANSION_SERVER);
      serviceClass = Class.forName(EXPANSION_SERVICE);
    } catch (ClassNotFoundException e) {
      LOG.info("No Java expansion service on the classpath; not starting one.");
      return null;
    }
    try {
      Object service = newExpansionService(serviceClass);
      Object server =
          serverClass
              .getMethod("create", serviceClass, String.class, int.class)
              .invoke(null, service, configuration.getHost(), port);
      LOG.info(
          "Java ExpansionService started on {}:{}",
          configuration.getHost(),
          serverClass.getMethod("getPort").invoke(server));
      return (AutoCloseable) server;
    } catch (ReflectiveOperationException | RuntimeException e) {
      LOG.warn("Could not start the Java expansion service; going on without it.", e);
      return null;
    }
  }

  private static Object newExpansionService(Class<?> serviceClass)
      throws ReflectiveOperationException {
    try {
      return serviceClass.getConstructor().newInstance();
    } catch (NoSuchMethodException e) {
      Constructor<?> withArgs = serviceClass.getConstructor(String[].class);
      return withArgs.newInstance((Object) new String[0]);
    }
  }
}
